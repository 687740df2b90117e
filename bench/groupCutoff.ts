import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { makeCounterDisk } from "../guest/index.js";
import { GroupCutoff, VmCapture } from "../replica-agent/capture/index.js";
import { QmpClient } from "../src/qemu/qmp/index.js";
import { startSystemVm } from "../src/qemu/processes/index.js";
import { benchScratch } from "./lib/cleanup.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

interface Guest {
  id: string;
  qmp: QmpClient;
  nbdSocketPath: string;
}

/**
 * group-cutoff: how long a consistency group's guests are paused for one cut-off (the agent's
 * capture code, capture/groupCutoff.ts: `stop` on every member at once, each member's
 * copy-before-write filter and bitmap transaction, `cont` on every member; first stop sent to last
 * cont answered), for groups of 2 and 10 counter guests (qemu-system-x86_64, TCG, each with its own
 * QMP monitor). Incremental cut-offs, each cycle confirmed without reading. Baseline, same run: one
 * VM's own cut-off pause (stop to cont) outside any group. Median over the rounds.
 */
export async function groupCutoff(ctx: BenchContext): Promise<BenchResult[]> {
  const rounds = ctx.quick ? 5 : 15;
  const { dir, cleanup } = benchScratch("qr-bench-group-", ctx.log);
  try {
    const guests: Guest[] = [];
    await Promise.all(
      Array.from({ length: 10 }, async (_, i) => {
        const gdir = join(dir, `vm${i}`);
        mkdirSync(gdir);
        const disk = join(gdir, "vda.qcow2");
        await makeCounterDisk(disk, { sizeMiB: 64 });
        const qmpSocketPath = join(gdir, "qmp.sock");
        const proc = await startSystemVm({
          qmpSocketPath,
          disks: [{ nodeName: "vda", path: disk, bus: "ide", bootIndex: 0 }],
          serialLogPath: join(gdir, "serial.log"),
          accel: "tcg",
          memoryMiB: 64,
        });
        cleanup.defer(`stop guest vm${i}`, () => proc.kill());
        const qmp = await QmpClient.connect({ socketPath: qmpSocketPath });
        cleanup.defer(`close vm${i}'s monitor`, () => qmp.close());
        guests[i] = { id: `vm${i}`, qmp, nbdSocketPath: join(gdir, "nbd.sock") };
      }),
    );
    ctx.log("10 counter guests running");
    let phase = 0;
    /** Median pause of `rounds` cut-offs of `members` (a group when more than one). */
    const measure = async (members: Guest[]): Promise<number> => {
      phase++;
      const group =
        members.length > 1
          ? GroupCutoff.for(
              `bench${phase}`,
              members.map((g) => g.id),
              10_000,
            )
          : undefined;
      const captures = await Promise.all(
        members.map((g) =>
          VmCapture.open({
            vmId: g.id,
            qmp: g.qmp,
            disks: [{ id: "vda", node: "vda" }],
            stateDir: join(dir, `state${phase}`),
            nbdSocketPath: g.nbdSocketPath,
            ...(group ? { group } : {}),
          }),
        ),
      );
      await Promise.all(captures.map(async (c) => (await c.enable()).confirm()));
      const pauses: number[] = [];
      for (let r = 0; r < rounds; r++) {
        const cycles = await Promise.all(captures.map((c) => c.beginCycle()));
        const pause = group ? cycles[0]!.group?.groupPauseMs : cycles[0]!.vcpuPauseMs;
        if (pause === undefined) throw new Error("the cut-off did not pause the guest (is it running?)");
        pauses.push(pause);
        await Promise.all(cycles.map((c) => c.confirm()));
        await sleep(100);
      }
      ctx.log(`${members.length} VM(s): pauses ${pauses.map((p) => p.toFixed(1)).join(" ")} ms`);
      return median(pauses);
    };
    const single = await measure(guests.slice(0, 1));
    const two = await measure(guests.slice(0, 2));
    const ten = await measure(guests);
    const result = (n: number, value: number, goal?: string): BenchResult => ({
      name: `group-cutoff-${n}`,
      description: `pause of ${n} guests for one group cut-off (first stop to last cont, median of ${rounds})`,
      value,
      unit: "ms",
      baseline: single,
      baselineDescription: "one VM's own cut-off pause",
      ratio: single / value,
      ...(goal ? { goal } : {}),
    });
    return [result(2, two), result(10, ten, "< 50 ms")];
  } finally {
    await cleanup.runAll();
  }
}
