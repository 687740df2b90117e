import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
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

/** SHA-256 of a point's disk read through its backing chain, or undefined if it vanished (merged away). */
async function pointHash(imagePath: string, scratch: string): Promise<string | undefined> {
  const raw = join(scratch, "point-check.raw");
  try {
    await convertImage(imagePath, raw, { srcFormat: "qcow2", dstFormat: "raw" });
    return createHash("sha256").update(readFileSync(raw)).digest("hex");
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
  /** pointId -> the primary state it was found equal to (a committed point never changes after). */
  private readonly matched = new Map<string, number>();

  constructor(
    private readonly model: PrimaryModel,
    private readonly scratch: string,
    private readonly storageDir: string,
  ) {}

  private check(ok: boolean, what: string): boolean {
    this.tally.checks++;
    if (!ok) this.tally.violations.push(what);
    return ok;
  }

  /**
   * Invariants 1 and 5: every point the ledger lists is whole (its image opens through its chain)
   * and byte-identical to a state of the primary that existed at its cut-off; points keep their
   * content across merges and retention; newer points never show older states.
   */
  async checkPoints(state: RelationshipState, label: string, getState: () => Promise<RelationshipState>): Promise<void> {
    let lastIndex = -1;
    for (const p of [...state.points].sort((a, b) => a.cycleSeq - b.cycleSeq)) {
      if (p.merging) continue;
      const index = await this.checkPoint(p, label, getState);
      if (index === undefined) continue;
      this.check(index >= lastIndex, `${label}: point ${p.pointId} (cycle ${p.cycleSeq}) shows primary state ${index}, older than the state ${lastIndex} of an earlier point`);
      lastIndex = Math.max(lastIndex, index);
    }
    // No partial point listed: a ledger point never names an overlay still being written.
    this.check(
      state.points.every((p) => p.disks.every((d) => !d.imagePath.endsWith(".partial"))),
      `${label}: a listed point names a .partial image`,
    );
  }

  private async checkPoint(p: RecoveryPoint, label: string, getState: () => Promise<RelationshipState>): Promise<number | undefined> {
    const disk = p.disks[0]!;
    const hash = await pointHash(disk.imagePath, this.scratch);
    this.pointsChecked++;
    if (hash === undefined) {
      // Gone between listing and reading: fine only if the ledger no longer names that image (a
      // merge made the point's image the base below it, or retention removed the point).
      const still = (await getState()).points.some((q) => q.pointId === p.pointId && !q.merging && q.disks[0]!.imagePath === disk.imagePath);
      this.check(!still, `${label}: point ${p.pointId} is listed but its image ${disk.imagePath} is missing`);
      return undefined;
    }
    const cutoff = Date.parse(p.cutoffAt);
    const states = this.model.states;
    const candidates = this.model.statesWithHash(hash);
    const inWindow = candidates.filter((i) => {
      const s = states[i]!;
      const end = states[i + 1]?.doneAt ?? Number.POSITIVE_INFINITY;
      return s.startedAt - CUTOFF_SLACK_MS <= cutoff && cutoff <= end + CUTOFF_SLACK_MS;
    });
    const known = this.matched.get(p.pointId);
    if (!this.check(inWindow.length > 0, `${label}: point ${p.pointId} (cycle ${p.cycleSeq}, cut-off ${p.cutoffAt}) matches no primary state of its cut-off (${candidates.length ? `equal to state(s) ${candidates.join(",")} of other times` : "equal to no state ever written"})`)) return undefined;
    const index = known !== undefined && inWindow.includes(known) ? known : inWindow.at(-1)!;
    if (known !== undefined) this.check(inWindow.includes(known), `${label}: point ${p.pointId} changed content (was state ${known})`);
    this.matched.set(p.pointId, index);
    return index;
  }

  /** Invariant 2 (no change lost): the newest point, cut after the last write, equals the primary now. */
  newestEqualsPrimary(state: RelationshipState, label: string): boolean {
    const newest = [...state.points].sort((a, b) => a.cycleSeq - b.cycleSeq).at(-1);
    const current = this.model.current;
    const idx = newest ? this.matched.get(newest.pointId) : undefined;
    return this.check(idx !== undefined && this.model.states[idx]!.hash === current.hash, `${label}: the newest point ${newest?.pointId ?? "(none)"} is not the primary's current content (state ${current.index})`);
  }

  /** Invariant 3: one primary in the generation; nothing failed over, and only site A sends. */
  onePrimary(state: RelationshipState, generation: number, label: string): void {
    this.check(state.generation === generation && state.primarySiteId === "site-a" && state.failover === undefined, `${label}: generation ${state.generation} (expected ${generation}), primary ${state.primarySiteId}, failover ${JSON.stringify(state.failover)}`);
  }

  /** Partial overlays left on disk once the site is idle (a partial is never a point; none should linger). */
  lingeringPartials(): string[] {
    const dir = join(this.storageDir, "vm1", "vda");
    return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(".partial")) : [];
  }

  violation(what: string): void {
    this.check(false, what);
  }
}
