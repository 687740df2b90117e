/**
 * npm run demo — what qreplica does so far, on this machine: a protected "VM" (qemu-storage-daemon
 * with a qcow2 disk) written to continuously, changed-block capture cycles taken from its dirty
 * bitmap through fleecing, each applied to a local replica image, and the replica proven
 * byte-identical to the disk at the last cut-off.
 */
import { join } from "node:path";
import { Command } from "commander";
import { VmCapture } from "../replica-agent/capture/index.js";
import { createLogger } from "../src/common/logger.js";
import { makeTmpDir } from "../src/common/tmpDir.js";
import { formatBytes, formatTable } from "../src/cli/table.js";
import { QmpClient } from "../src/qemu/qmp/index.js";
import { compareImages, startStorageDaemonVm, type StorageDaemonVm } from "../src/qemu/processes/index.js";
import { applyExtentsToRaw } from "../test/helpers/applyExtents.js";

const MiB = 1024 * 1024;
const opts = new Command()
  .name("demo")
  .option("--cycles <n>", "capture cycles to run", (v) => Number(v), 5)
  .option("--interval-ms <ms>", "time between cycles", (v) => Number(v), 1500)
  .option("--disk-mib <n>", "disk size", (v) => Number(v), 1024)
  .option("--json", "print the cycles as JSON", false)
  .option("--keep", "keep the working directory", false)
  .parse()
  .opts<{ cycles: number; intervalMs: number; diskMib: number; json: boolean; keep: boolean }>();

const say = (text: string) => {
  if (!opts.json) console.log(text);
};
const logger = createLogger("demo", process.env.QREPLICA_LOG_LEVEL ?? "warn");

/** A guest that keeps writing: data at random places, now and then a zeroed range. */
function startWriter(vm: StorageDaemonVm): { stop(): Promise<number> } {
  let running = true;
  let writes = 0;
  const loop = (async () => {
    while (running) {
      const cmds = Array.from({ length: 8 }, () => {
        const offsetKiB = Math.floor(Math.random() * (opts.diskMib * 1024 - 1024)) & ~63;
        const lenKiB = 64 * (1 + Math.floor(Math.random() * 8));
        return Math.random() < 0.15 ? `write -z ${offsetKiB}k ${lenKiB}k` : `write -P ${Math.floor(Math.random() * 255) + 1} ${offsetKiB}k ${lenKiB}k`;
      });
      await vm.guestWrite("vda", cmds);
      writes += cmds.length;
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return writes;
    },
  };
}

const tmp = makeTmpDir("qr-demo-");
const vm = await startStorageDaemonVm(tmp.path, [{ id: "vda", sizeBytes: opts.diskMib * MiB }]);
const qmp = await QmpClient.connect({ socketPath: vm.qmpSocketPath, logger });
const replica = join(tmp.path, "replica-vda.raw");
const rows: Array<Record<string, string | number>> = [];
try {
  say(`qreplica demo — working directory ${tmp.path}`);
  say(`1. A protected VM: qemu-storage-daemon (pid ${vm.proc.pid}) with a ${opts.diskMib} MiB qcow2 disk; the guest writes through its NBD export.`);
  await vm.guestWrite("vda", ["write -P 0x42 0 64M", "write -P 0x17 512M 16M"]);
  const capture = await VmCapture.open({
    vmId: "demo-vm",
    qmp,
    disks: [{ id: "vda", node: "node-vda" }],
    stateDir: join(tmp.path, "agent-state"),
    nbdSocketPath: vm.nbdSocketPath,
    logger,
  });
  say(`2. Capture opened: tracking status '${capture.report?.status}'.`);

  const runCycle = async (kind: "full" | "incremental") => {
    const started = process.hrtime.bigint();
    const cycle = kind === "full" ? await capture.enable() : await capture.beginCycle();
    const disk = cycle.disks[0]!;
    const totals = await applyExtentsToRaw(replica, disk.sizeAtCutoff, disk.extents());
    await cycle.confirm();
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const row = {
      cycle: cycle.seq,
      kind,
      cutoff: cycle.cutoffAt.toISOString().slice(11, 23),
      tracked: formatBytes(disk.dirtyBytes),
      extents: totals.extents,
      data: formatBytes(totals.data),
      zeroes: formatBytes(totals.zero),
      "time ms": Math.round(seconds * 1000),
      "MiB/s": (totals.data / MiB / seconds).toFixed(0),
    };
    rows.push(row);
    return row;
  };

  say("3. Initial replication: one point-in-time full read; holes and zeroes are skipped, not read.");
  await runCycle("full");
  say(formatTable(Object.keys(rows[0]!), rows.map((r) => Object.values(r))));

  say(`4. The guest now writes continuously; ${opts.cycles} incremental cycles, one every ${opts.intervalMs} ms.`);
  say("   Each cut-off is one QMP transaction: new bitmap, old one disabled, fleecing started.");
  const writer = startWriter(vm);
  for (let i = 0; i < opts.cycles; i++) {
    await new Promise((r) => setTimeout(r, opts.intervalMs));
    await runCycle("incremental");
  }
  const writes = await writer.stop();
  await runCycle("incremental");
  say(formatTable(Object.keys(rows[0]!), rows.map((r) => Object.values(r))));

  say(`5. The guest made ${writes} writes. After a final cycle with the guest quiet, compare replica and disk:`);
  const cmp = await compareImages(replica, vm.guestUri("vda"), { formatA: "raw", formatB: "raw" });
  say(`   qemu-img compare: ${cmp.detail}`);
  if (opts.json) console.log(JSON.stringify({ cycles: rows, guestWrites: writes, identical: cmp.identical }, null, 2));
  if (!cmp.identical) {
    console.error("demo: the replica differs from the disk — this is a bug");
    process.exitCode = 1;
  }
} finally {
  await qmp.close();
  await vm.proc.stop();
  if (!opts.keep) tmp.cleanup();
}
