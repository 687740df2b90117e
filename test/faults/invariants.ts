import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { RelationshipState, RecoveryPoint } from "../../src/ledger/index.js";
import { convertImage } from "../../src/qemu/processes/index.js";
import type { PrimaryModel } from "./primaryModel.js";

/**
 * The cut-off is stamped by the agent around the moment it freezes the disk, and a qemu-io write is
 * visible from some moment between its start and its return: a state matches a point whose cut-off
 * lies within its life give or take this much (the content itself must match byte for byte).
 */
const CUTOFF_SLACK_MS = 1_500;

export interface InvariantTally {
  checks: number;
  violations: string[];
}

/** A point's disk read through its backing chain, or undefined if it vanished (merged away). */
async function pointImage(imagePath: string, scratch: string): Promise<Buffer | undefined> {
  const raw = join(scratch, "point-check.raw");
  try {
    await convertImage(imagePath, raw, { srcFormat: "qcow2", dstFormat: "raw" });
    return readFileSync(raw);
  } catch (err) {
    if (!existsSync(imagePath)) return undefined;
    throw err;
  } finally {
    rmSync(raw, { force: true });
  }
}

export class InvariantChecker {
  readonly tally: InvariantTally = { checks: 0, violations: [] };
  pointsChecked = 0;
  /** Points that caught a write half done at their cut-off (legitimate: the primary held that too). */
  tornWrites = 0;
  /** Reads of a point discarded because a merge ran while they were made (see readWhileNoMerge). */
  readsDuringMerge = 0;
  /** pointId -> the primary state it was found equal to (a committed point never changes after). */
  private readonly matched = new Map<string, number>();

  constructor(
    private readonly model: PrimaryModel,
    private readonly scratch: string,
    private readonly storageDir: string,
    /** Where a point found wrong is kept, with the closest primary state, for a look afterwards. */
    private readonly findingsDir: string,
  ) {}

  /** Counts one invariant check; a failed one is a violation, printed at once. */
  check(ok: boolean, what: string): boolean {
    this.tally.checks++;
    if (!ok) {
      this.tally.violations.push(what);
      // Printed as found, so a run stopped before its report still shows what it found.
      console.log(`INVARIANT VIOLATION: ${what}`);
    }
    return ok;
  }

  /**
   * Invariants 1 and 5: every point the ledger lists is whole (its image opens through its chain)
   * and byte-identical to a state of the primary that existed at its cut-off; points keep their
   * content across merges and retention; newer points never show older states.
   */
  async checkPoints(state: RelationshipState, label: string, getState: () => Promise<RelationshipState>): Promise<void> {
    let lastIndex = -1;
    let last: RecoveryPoint | undefined;
    const states = this.model.states;
    const describe = (q: RecoveryPoint, i: number) =>
      `${q.pointId} (cycle ${q.cycleSeq}, cut-off ${q.cutoffAt}) holds state ${i} (${states[i]!.op ?? "-"}, ${new Date(states[i]!.startedAt).toISOString()}..${new Date(states[i]!.doneAt).toISOString()})`;
    for (const p of [...state.points].sort((a, b) => a.cycleSeq - b.cycleSeq)) {
      if (p.merging) continue;
      const index = await this.checkPoint(p, label, getState);
      if (index === undefined) continue;
      // States of equal content cannot be told apart by a point (a primary reloaded twice with no
      // write between): only a different, older content is a newer point going back in time.
      const older = index < lastIndex && states[index]!.hash !== states[lastIndex]!.hash;
      this.check(!older, `${label}: point ${last ? describe(p, index) : p.pointId}, older than the earlier point ${last ? describe(last, lastIndex) : lastIndex}`);
      if (index >= lastIndex) {
        lastIndex = index;
        last = p;
      }
    }
    // No partial point listed: a ledger point never names an overlay still being written.
    this.check(
      state.points.every((p) => p.disks.every((d) => !d.imagePath.endsWith(".partial"))),
      `${label}: a listed point names a .partial image`,
    );
  }

  private async checkPoint(p: RecoveryPoint, label: string, getState: () => Promise<RelationshipState>): Promise<number | undefined> {
    const disk = p.disks[0]!;
    const read = await this.readWhileNoMerge(p, getState);
    // Merged away before a quiet moment came: nothing left to check.
    if (read === "gone") return undefined;
    const content = read;
    this.pointsChecked++;
    if (content === undefined) {
      // Gone between listing and reading: fine only if the ledger no longer names that image (a
      // merge made the point's image the base below it, or retention removed the point).
      const still = (await getState()).points.some((q) => q.pointId === p.pointId && !q.merging && q.disks[0]!.imagePath === disk.imagePath);
      this.check(!still, `${label}: point ${p.pointId} is listed but its image ${disk.imagePath} is missing`);
      return undefined;
    }
    const hash = createHash("sha256").update(content).digest("hex");
    const cutoff = Date.parse(p.cutoffAt);
    const states = this.model.states;
    const candidates = this.model.statesWithHash(hash);
    const inWindow = candidates.filter((i) => {
      const s = states[i]!;
      const end = states[i + 1]?.doneAt ?? Number.POSITIVE_INFINITY;
      return s.startedAt - CUTOFF_SLACK_MS <= cutoff && cutoff <= end + CUTOFF_SLACK_MS;
    });
    const known = this.matched.get(p.pointId);
    const changed = (now: number[]) => known !== undefined && !now.includes(known);
    const torn = inWindow.length === 0 ? this.tornAt(content, cutoff) : undefined;
    if (torn !== undefined) {
      this.tornWrites++;
      this.check(!changed([torn]), `${label}: point ${p.pointId} changed content (was state ${known})`);
      this.matched.set(p.pointId, torn);
      return torn;
    }
    if (inWindow.length === 0) {
      // Explained (and kept on disk) only when wrong: it rebuilds and compares every nearby state.
      this.violation(
        `${label}: point ${p.pointId} (cycle ${p.cycleSeq}, cut-off ${p.cutoffAt}) matches no primary state of its cut-off (${candidates.length ? `equal to state(s) ${candidates.join(",")} of other times` : "equal to no state ever written"})${this.explain(p, content, cutoff)}`,
      );
      return undefined;
    }
    this.tally.checks++;
    const index = known !== undefined && inWindow.includes(known) ? known : inWindow.at(-1)!;
    if (known !== undefined) this.check(inWindow.includes(known), `${label}: point ${p.pointId} changed content (was state ${known}, now equal to state(s) ${inWindow.join(",")})`);
    this.matched.set(p.pointId, index);
    return index;
  }

  /**
   * The point's image read through its chain while no merge ran: the ledger showed no point
   * merging and the same count of completed merges before and after the read. Images are read
   * with force-share, and retention rewrites the merged point's base or the next point a thinning
   * folds into: a read overlapping that can see a merge half done, which no failover or test VM
   * ever does (they wait for merges). Such reads are discarded and counted.
   */
  private async readWhileNoMerge(p: RecoveryPoint, getState: () => Promise<RelationshipState>): Promise<Buffer | undefined | "gone"> {
    const quiet = (s: RelationshipState) => !s.points.some((q) => q.merging);
    let content: Buffer | undefined;
    for (let attempt = 0; attempt < 40; attempt++) {
      const before = await getState();
      if (!quiet(before)) {
        await new Promise((r) => setTimeout(r, 25));
        continue;
      }
      // The listing's own image: a merge since `p` was listed may have moved the point to another.
      const now = before.points.find((q) => q.pointId === p.pointId && q.disks[0]!.imagePath === p.disks[0]!.imagePath);
      if (!now) return "gone";
      content = await pointImage(p.disks[0]!.imagePath, this.scratch);
      const after = await getState();
      if (quiet(after) && after.counters.mergesCompleted === before.counters.mergesCompleted) return content;
      this.readsDuringMerge++;
    }
    // Retention never paused long enough: judged on the last read (a finding is then re-examined by hand).
    return content ?? (await pointImage(p.disks[0]!.imagePath, this.scratch));
  }

  /**
   * A write split into several requests (qemu-io's big writes) can be caught by the cut-off half
   * done: the primary then held, at that instant, the state before it with part of it applied. The
   * point must equal that block for block, and differ from the state before only inside the write.
   * Returns the state before the torn write, or undefined.
   */
  private tornAt(content: Buffer, cutoff: number): number | undefined {
    const states = this.model.states;
    for (let j = states.length - 1; j >= 1; j--) {
      const s = states[j]!;
      if (s.doneAt + CUTOFF_SLACK_MS < cutoff) break;
      if (s.startedAt - CUTOFF_SLACK_MS > cutoff || !s.undo) continue;
      const before = this.model.imageAt(j - 1);
      const after = this.model.imageAt(j);
      if (!before || !after) return undefined;
      const { offset, old } = s.undo;
      const outside = Buffer.concat([content.subarray(0, offset), content.subarray(offset + old.length)]);
      if (!outside.equals(Buffer.concat([before.subarray(0, offset), before.subarray(offset + old.length)]))) continue;
      let ok = true;
      for (let at = offset; at < offset + old.length && ok; at += 512) {
        const blk = content.subarray(at, at + 512);
        ok = blk.equals(before.subarray(at, at + 512)) || blk.equals(after.subarray(at, at + 512));
      }
      if (ok) return j - 1;
    }
    return undefined;
  }

  /**
   * For a finding: how the point differs from each state of its time (bytes and where), and the
   * point and the closest state kept as files (QR_KEEP-independent) for a look with qemu-img.
   */
  private explain(p: RecoveryPoint, content: Buffer, cutoff: number): string {
    const states = this.model.states;
    const near = states.filter((s) => Math.abs(s.startedAt - cutoff) < 5_000 || Math.abs(s.doneAt - cutoff) < 5_000);
    const lines: string[] = [];
    let best: { index: number; bytes: number; img: Buffer } | undefined;
    for (const s of near) {
      const img = this.model.imageAt(s.index);
      if (!img) continue;
      const ranges: string[] = [];
      let bytes = 0;
      for (let at = 0; at < img.length; at += 4096) {
        if (!img.subarray(at, at + 4096).equals(content.subarray(at, at + 4096))) {
          bytes += 4096;
          if (ranges.length < 6) ranges.push(`${at}`);
        }
      }
      if (!best || bytes < best.bytes) best = { index: s.index, bytes, img };
      lines.push(
        `  state ${s.index} (${new Date(s.startedAt).toISOString()}..${new Date(s.doneAt).toISOString()}, ${s.op ?? "-"}): ${bytes} bytes differ in 4 KiB blocks at ${ranges.join(",")}${bytes / 4096 > ranges.length ? ",..." : ""}`,
      );
    }
    const dir = join(this.findingsDir, p.pointId);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "point.raw"), content);
    if (best) writeFileSync(join(dir, `state-${best.index}.raw`), best.img);
    return `\n  kept in ${dir}\n${lines.join("\n")}`;
  }

  /**
   * Invariant 2, no change lost: with the writes paused, the newest point holds the primary's current content.
   * Judged on the newest point as listed now, read again if checkPoints could not (a merge moved it
   * or never paused): a point left unread is no finding, and a finding says what the point holds.
   */
  async newestEqualsPrimary(getState: () => Promise<RelationshipState>, label: string): Promise<boolean> {
    const current = this.model.current;
    let newest: RecoveryPoint | undefined;
    for (let attempt = 0; attempt < 10; attempt++) {
      const state = await getState();
      newest = [...state.points]
        .filter((p) => !p.merging)
        .sort((a, b) => a.cycleSeq - b.cycleSeq)
        .at(-1);
      if (!newest) break;
      const idx = this.matched.get(newest.pointId) ?? (await this.checkPoint(newest, label, getState));
      if (idx === undefined) continue;
      const held = this.model.states[idx]!;
      return this.check(
        held.hash === current.hash,
        `${label}: the newest point ${newest.pointId} (cycle ${newest.cycleSeq}, cut-off ${newest.cutoffAt}) holds primary state ${idx} ` +
          `(its write done at ${new Date(held.doneAt).toISOString()}), not the current state ${current.index} (written ${new Date(current.startedAt).toISOString()} - ${new Date(current.doneAt).toISOString()})`,
      );
    }
    return this.check(
      false,
      `${label}: the newest point ${newest?.pointId ?? "(none)"} could not be read in 10 tries (merges never paused); the primary is at state ${current.index}`,
    );
  }

  /** Invariant 3: one primary in the generation; nothing failed over, and only site A sends. */
  onePrimary(state: RelationshipState, generation: number, label: string): void {
    this.check(
      state.generation === generation && state.primarySiteId === "site-a" && state.failover === undefined,
      `${label}: generation ${state.generation} (expected ${generation}), primary ${state.primarySiteId}, failover ${JSON.stringify(state.failover)}`,
    );
  }

  /**
   * Once the agent is gone and the site idle: images in the VM's storage that no listed point names
   * (partial overlays of cut cycles, overlays merged away): each is space leaked by a fault.
   */
  strayImages(state: RelationshipState): string[] {
    const dir = join(this.storageDir, "vm1", "vda");
    const named = new Set(state.points.flatMap((p) => p.disks.map((d) => d.imagePath)));
    return existsSync(dir) ? readdirSync(dir).filter((f) => (f.endsWith(".partial") || f.endsWith(".qcow2")) && !named.has(join(dir, f))) : [];
  }

  violation(what: string): void {
    this.check(false, what);
  }
}
