import { join } from "node:path";
import { VmCapture } from "../replica-agent/capture/index.js";
import { QmpClient } from "../src/qemu/qmp/index.js";
import { runTool, startStorageDaemonVm } from "../src/qemu/processes/index.js";
import { makeTmpDir } from "../src/common/tmpDir.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const MiB = 1024 * 1024;

/**
 * capture-read: MiB/s of dirty extents read through our NBD client from a fleece export whose
 * every block is dirty, against nbdcopy copying the same export to null: in the same run.
 */
export async function captureRead(ctx: BenchContext): Promise<BenchResult[]> {
  const sizeMiB = ctx.quick ? 256 : 2048;
  const rounds = 7;
  const tmp = makeTmpDir("qr-bench-");
  const vm = await startStorageDaemonVm(tmp.path, [{ id: "vda", sizeBytes: sizeMiB * MiB }]);
  const qmp = await QmpClient.connect({ socketPath: vm.qmpSocketPath });
  try {
    const capture = await VmCapture.open({
      vmId: "bench",
      qmp,
      disks: [{ id: "vda", node: "node-vda" }],
      stateDir: join(tmp.path, "state"),
      nbdSocketPath: vm.nbdSocketPath,
    });
    const full = await capture.enable();
    for await (const _ of full.disks[0]!.extents());
    await full.confirm();
    ctx.log(`dirtying all ${sizeMiB} MiB`);
    // qemu-io writes at most 2 GiB - 512 at once.
    const writes = Array.from({ length: Math.ceil(sizeMiB / 1024) }, (_, i) => `write -P 0x5a ${i * 1024}M ${Math.min(1024, sizeMiB - i * 1024)}M`);
    await vm.guestWrite("vda", writes);
    const cycle = await capture.beginCycle();
    const disk = cycle.disks[0]!;
    if (disk.dirtyBytes !== sizeMiB * MiB) throw new Error(`expected ${sizeMiB} MiB dirty, bitmap says ${disk.dirtyBytes}`);
    const uri = `nbd+unix:///qreplica-vda-${cycle.seq}?socket=${vm.nbdSocketPath}`;

    const ours: number[] = [];
    const theirs: number[] = [];
    for (let i = 0; i < rounds; i++) {
      let t = process.hrtime.bigint();
      await runTool("nbdcopy", [uri, "null:"]);
      theirs.push(sizeMiB / (Number(process.hrtime.bigint() - t) / 1e9));
      t = process.hrtime.bigint();
      const cpu0 = process.cpuUsage();
      let bytes = 0;
      for await (const e of disk.extents()) bytes += e.length;
      ours.push(bytes / MiB / (Number(process.hrtime.bigint() - t) / 1e9));
      if (bytes !== sizeMiB * MiB) throw new Error(`read ${bytes} bytes, expected ${sizeMiB * MiB}`);
      const cpu = process.cpuUsage(cpu0);
      ctx.log(
        `round ${i + 1}: qreplica ${ours[i]!.toFixed(0)} MiB/s, nbdcopy ${theirs[i]!.toFixed(0)} MiB/s; our CPU user ${(cpu.user / 1e6).toFixed(2)} s sys ${(cpu.system / 1e6).toFixed(2)} s for ${(Number(process.hrtime.bigint() - t) / 1e9).toFixed(2)} s`,
      );
    }
    await cycle.confirm();
    // Interleaved rounds, the ratio of each round's pair, then the median: a shared machine makes
    // single runs swing by 2x, and a pair run back to back sees the same weather.
    const value = median(ours);
    const baseline = median(theirs);
    const ratio = median(ours.map((v, i) => v / theirs[i]!));
    return [
      {
        name: "capture-read",
        description: `dirty extents read from a fleece export (${sizeMiB} MiB, all dirty, ${rounds} interleaved rounds, ratio = median of the rounds' ratios; ours ${ours.map((v) => v.toFixed(0)).join(", ")} MiB/s)`,
        value,
        unit: "MiB/s",
        baseline,
        baselineDescription: `nbdcopy of the same export to null: (${theirs.map((v) => v.toFixed(0)).join(", ")} MiB/s)`,
        ratio,
        goal: ">= 1.0x",
      },
    ];
  } finally {
    await qmp.close();
    await vm.proc.kill();
    tmp.cleanup();
  }
}
