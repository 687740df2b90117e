import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { controlClient, unary } from "../../src/cli/siteClient.js";
import type { RecoveryPoint } from "../../src/gen/qreplica/v1/control.js";
import { compareImages } from "../../src/qemu/processes/index.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { runCli, waitFor } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const DISK = 32 * MiB;
let env: TwoSites | undefined;
let cleanup: (() => void) | undefined;
const holders: ChildProcess[] = [];
afterEach(async () => {
  for (const h of holders.splice(0)) h.kill("SIGKILL");
  await env?.stopAll();
  if (!process.env.QR_KEEP) cleanup?.();
  env = undefined;
});

interface Write {
  offset: number;
  length: number;
  byte: number;
  /** When qemu-io started / returned: a cut-off between done and the next write's start sees exactly this state. */
  startedAt: number;
  doneAt: number;
}

/** Opens one image read-only (not its backing chain) and keeps it open, as another tool would. */
function holdImage(path: string): { release(): Promise<void> } {
  const child = spawn("qemu-io", ["-r", `json:${JSON.stringify({ driver: "qcow2", file: { driver: "file", filename: path }, backing: null })}`], {
    stdio: ["pipe", "ignore", "ignore"],
  });
  holders.push(child);
  return {
    async release() {
      child.stdin.end();
      if (child.exitCode === null) await new Promise((r) => child.once("exit", r));
    },
  };
}

const imageOf = (t: TwoSites, seq: number, first: boolean) => join(t.siteB, "storage", "vm1", "vda", first ? "base.qcow2" : `rp-${String(seq).padStart(8, "0")}.qcow2`);

/**
 * The files that open each listed point: the oldest point is the base, every later one its own
 * overlay. A file can vanish between the list and the check only by a merge that finished
 * meanwhile: then a new list no longer shows that point above the base.
 */
async function checkListed(t: TwoSites, list: () => Promise<Array<{ seq: number; id: string }>>): Promise<number> {
  const listed = await list();
  for (const [i, p] of listed.entries()) {
    if (existsSync(imageOf(t, p.seq, i === 0))) continue;
    const again = await list();
    const now = again.findIndex((q) => q.id === p.id);
    if (now > 0) throw new Error(`point ${p.id} is listed (${again.map((q) => q.id).join(", ")}) but ${imageOf(t, p.seq, false)} does not exist`);
  }
  return listed.length;
}

describe("retention under 1 s cycles: the points list never shows a point without its images", { timeout: 600_000 }, () => {
  it("max-points 4, 45 cycles of changes: every sample's points have their files; every remaining point equals what it represents", async () => {
    const tmp = makeTmpDir("qr-retention-");
    cleanup = tmp.cleanup;
    env = await setupTwoSites(tmp.path, { diskBytes: DISK, intervalSeconds: 1, maxPoints: 4 });
    const t = env;
    await t.startSite(t.siteB);
    t.startAgent();
    await waitFor("the initial replication", async () => ((await t.relationship()).points.length >= 1 ? true : undefined), 120_000);

    const client = controlClient({ dir: t.siteB });
    const rpcList = async () =>
      (await unary(client, client.listRecoveryPoints, { vmId: "vm1" })).recoveryPoints.map((p: RecoveryPoint) => ({ seq: Number(p.sequence), id: p.recoveryPointId }));
    const cliList = async () => {
      const r = await runCli(["points", "vm1", "--dir", t.siteB, "--json"]);
      if (r.code !== 0) throw new Error(`qreplica points failed: ${r.stderr}`);
      return (JSON.parse(r.stdout) as Array<{ sequence: number; recoveryPointId: string }>).map((p) => ({ seq: p.sequence, id: p.recoveryPointId }));
    };
    let samples = 0;
    let sampling = true;
    let sampleError: Error | undefined;
    // Sampled as fast as the site answers, all through the cycles and merges.
    const sampler = (async () => {
      while (sampling && !sampleError) {
        try {
          await checkListed(t, rpcList);
          samples++;
        } catch (err) {
          sampleError = err as Error;
        }
        await new Promise((r) => setTimeout(r, 25));
      }
    })();

    const writes: Write[] = [];
    const firstSeq = (await t.relationship()).lastCycleSeq;
    for (let k = 0; k < 45 && !sampleError; k++) {
      const w = { offset: ((k * 7) % 30) * MiB + (k % 3) * 64 * 1024, length: MiB, byte: (k % 250) + 1, startedAt: Date.now(), doneAt: 0 };
      await t.vm.guestWrite("vda", [`write -P ${w.byte} ${w.offset} ${w.length}`]);
      w.doneAt = Date.now();
      writes.push(w);
      await waitFor(`a point cut after write ${k}`, async () => ((await t.relationship()).points.some((p) => Date.parse(p.cutoffAt) > w.doneAt) ? true : undefined), 60_000, 50);
      if (k % 5 === 0) await checkListed(t, cliList);
      if (k === 12) {
        // Another process (a backup tool, an operator's qemu-img) briefly holds an image a merge
        // must rewrite: that merge fails. Retention must finish it later, not list it half done.
        const listed = await rpcList();
        const held = holdImage(imageOf(t, listed[2]!.seq, false));
        await waitFor(
          "a retention merge to fail on the held image",
          () => (readFileSync(join(t.siteB, "site.log"), "utf8").includes("retention merge failed") ? true : undefined),
          60_000,
        );
        const heldAt = Date.now();
        await waitFor(
          "two more points while the image is held",
          async () => ((await t.relationship()).points.filter((p) => Date.parse(p.cutoffAt) > heldAt).length >= 2 ? true : undefined),
          60_000,
        );
        await held.release();
      }
    }
    sampling = false;
    await sampler;
    if (sampleError) throw sampleError;
    const state = await t.relationship();
    expect(state.lastCycleSeq - firstSeq).toBeGreaterThanOrEqual(40);
    expect(samples).toBeGreaterThan(100);
    expect(state.counters.mergesCompleted).toBeGreaterThanOrEqual(35);
    await t.daemons[1]!.kill("SIGTERM"); // the agent: no more cycles while the points are compared
    await waitFor(
      "retention to settle",
      async () => {
        const s = await t.relationship();
        return s.points.every((p) => !p.merging) && s.points.length <= 4 ? s : undefined;
      },
      60_000,
    );
    const final = await t.relationship();
    const listed = await rpcList();
    expect(listed.map((p) => p.id)).toEqual(final.points.map((p) => p.pointId));

    // Each point is the disk after the last write that finished before its cut-off.
    const model = Buffer.alloc(DISK);
    const expected = join(t.dir, "expected.raw");
    let compared = 0;
    for (const p of final.points) {
      const cut = Date.parse(p.cutoffAt);
      const after = writes.filter((w) => w.startedAt <= cut);
      const last = after.at(-1);
      if (last && last.doneAt >= cut) continue; // cut while a write was in flight: either state is right
      model.fill(0);
      for (const w of after) model.fill(w.byte, w.offset, w.offset + w.length);
      writeFileSync(expected, model);
      const cmp = await compareImages(p.disks[0]!.imagePath, expected, { formatA: "qcow2", formatB: "raw" });
      expect(cmp.detail, `point ${p.pointId}`).toMatch(/identical/i);
      compared++;
    }
    expect(compared).toBeGreaterThanOrEqual(2);
    client.close();
  });
});
