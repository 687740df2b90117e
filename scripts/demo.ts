/**
 * npm run demo — the qreplica story on this machine, with real processes: a CA, two sites (A and
 * B), a protected VM on A (a tiny guest that counts on its own disk), replication to B, a test
 * failover, a planned failover to B with zero data loss, reverse replication back to A that sends
 * only what differs, and a planned failback to A. Every step is in the ledger; the guest's counter proves the data.
 */
import { join } from "node:path";
import { Command } from "commander";
import { readCounters, readDiskCounter, waitForCounter } from "../guest/index.js";
import { makeTmpDir } from "../src/common/tmpDir.js";
import { getSqliteEventStore, relationshipStream } from "../src/ledger/index.js";
import { runCli, waitFor } from "../test/helpers/processes.js";
import { setupTwoSites } from "../test/helpers/twoSites.js";

const opts = new Command().name("demo").option("--keep", "keep the working directory", false).parse().opts<{ keep: boolean }>();
const step = (n: number, text: string) => console.log(`\n\x1b[1m${n}. ${text}\x1b[0m`);
async function qreplica(args: string[], print = true): Promise<string> {
  console.log(`$ qreplica ${args.join(" ")}`);
  const r = await runCli(args);
  if (print) process.stdout.write(r.stdout.replace(/^/gm, "  "));
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed: ${r.stderr}${r.stdout}`);
  return r.stdout;
}
async function eventCount(siteDir: string): Promise<number> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).length;
  } finally {
    await store.close();
  }
}
const json = async <T>(args: string[]): Promise<T> => JSON.parse(await qreplica([...args, "--json"], false)) as T;

const tmp = makeTmpDir("qr-demo-");
console.log(`qreplica demo — working directory ${tmp.path}`);
step(1, "A CA, two sites (A: primary, B: replica) with their certificates, and the agent's identity authorized on B");
const t = await setupTwoSites(tmp.path, { diskBytes: 8 * 1024 * 1024, intervalSeconds: 2, counterGuest: true, maxPoints: 6 });
let ok = false;
try {
  await qreplica(["authorizations", "--dir", t.siteB]);
  step(2, "Both site servers start: gRPC over mutual TLS, SQLite ledger, a site-owned qemu-storage-daemon");
  await t.startSite(t.siteA);
  await t.startSite(t.siteB);
  step(3, "The protected VM on site A: qemu-system-x86_64 booting a boot-sector guest that counts on its disk");
  await waitForCounter(t.guest!.serialLogPath, (v) => v > 5, 90_000);
  console.log(`  serial console: QREPLICA-COUNTER ${readCounters(t.guest!.serialLogPath).at(-1)} ... (18 writes a second)`);

  step(4, "The capture agent protects it: initial replication to B, then a cycle every 2 s");
  t.startAgent();
  await waitFor("four recovery points", async () => ((await t.relationship()).points.length >= 4 ? true : undefined), 120_000);
  await qreplica(["status", "--dir", t.siteB]);
  await qreplica(["points", "vm1", "--dir", t.siteB]);

  step(5, "Test failover on B: a VM on a throwaway overlay of the latest point, isolated network; replication goes on");
  const test = await json<{ testId: string; recoveryPointId: string; vm: { serialLog: string; timeToRunningMs: number } }>(["failover", "vm1", "--test", "--dir", t.siteB]);
  await waitForCounter(test.vm.serialLog, () => true, 90_000);
  const testedPoint = (await t.relationship()).points.find((p) => p.pointId === test.recoveryPointId)!;
  console.log(
    `  test VM running after ${test.vm.timeToRunningMs} ms; it booted from ${test.recoveryPointId} and printed counter ${readCounters(test.vm.serialLog)[0]} (the point holds ${await readDiskCounter(testedPoint.disks[0]!.imagePath)})`,
  );
  const seq = (await t.relationship()).lastCycleSeq;
  await waitFor("two more points during the test", async () => ((await t.relationship()).lastCycleSeq >= seq + 2 ? true : undefined), 60_000);
  await qreplica(["status", "--dir", t.siteB]);
  await qreplica(["test-failover", "stop", "vm1", "--dir", t.siteB]);

  step(6, "Planned failover to B: the agent stops the VM (ACPI, then pause), ships a final cycle, B starts the VM; reverse replication B -> A starts at once");
  const fo = await json<{ recoveryPointId: string; generation: number; vm: { serialLog: string; timeToRunningMs: number } }>([
    "failover",
    "vm1",
    "--planned",
    "--dir",
    t.siteB,
    "--primary-dir",
    t.siteA,
  ]);
  await t.guest!.proc.exited;
  await waitForCounter(fo.vm.serialLog, () => true, 90_000);
  console.log(
    `  the primary's disk ended at counter ${await readDiskCounter(t.guest!.diskPath)}; the VM on B (generation ${fo.generation}, from ${fo.recoveryPointId}) resumed at ${readCounters(fo.vm.serialLog)[0]}: zero data loss`,
  );

  step(7, "Reverse replication B -> A onto A's old disk: both sides hash 64 KiB chunks, only differing chunks cross the wire");
  await waitFor("two reverse points on A", async () => ((await t.relationship("vm1", t.siteA)).points.length > 1 ? true : undefined), 120_000);
  const storeA = getSqliteEventStore({ path: join(t.siteA, "ledger.sqlite"), create: false });
  const first = (await storeA.readStream(relationshipStream("vm1"))).find((e) => e.type === "CycleCommitted")!.data as { dataBytes: number; wireBytes: number };
  await storeA.close();
  console.log(`  the whole disk was compared; ${first.dataBytes} bytes differed and were sent (${first.wireBytes} bytes on the wire after zstd)`);
  await qreplica(["points", "vm1", "--dir", t.siteA]);

  step(8, "Failback: a planned failover on A; the reverse agent on B stops the VM there and ships its last changes");
  const back = await json<{ recoveryPointId: string; generation: number; vm: { serialLog: string; timeToRunningMs: number } }>(["failover", "vm1", "--planned", "--dir", t.siteA]);
  await waitForCounter(back.vm.serialLog, () => true, 90_000);
  const lastOnB = readCounters(fo.vm.serialLog).at(-1)!;
  console.log(
    `  VM running on A again (generation ${back.generation}, from ${back.recoveryPointId}), counting from ${readCounters(back.vm.serialLog)[0]} (B's VM last printed ${lastOnB})`,
  );
  await qreplica(["events", "vm1", "--dir", t.siteB, "--from", String(Math.max(0, (await eventCount(t.siteB)) - 8))]);
  await qreplica(["status", "--dir", t.siteA]);
  await qreplica(["ledger", "verify", "--dir", t.siteB]);
  await qreplica(["ledger", "verify", "--dir", t.siteA]);
  ok = true;
} finally {
  await t.stopAll();
  if (!opts.keep) tmp.cleanup();
}
console.log(ok ? "\ndemo complete: replication, test failover, planned failover, reverse replication and failback, all in the ledgers." : "\ndemo failed");
process.exit(ok ? 0 : 1);
