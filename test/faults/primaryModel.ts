import { createHash, randomBytes } from "node:crypto";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { convertImage, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import type { Rng } from "./rng.js";

const KiB = 1024;
const MiB = 1024 * KiB;

/** One content of the primary disk: from the moment its write began to the end of the next write. */
export interface PrimaryState {
  index: number;
  hash: string;
  /** ms since epoch when the write that made this state began (0: the empty disk). */
  startedAt: number;
  /** ms since epoch when that write had returned (qemu-io exits after its flush). */
  doneAt: number;
  /** What the write made this state from: the bytes it overwrote (kept for the last states only). */
  undo?: { offset: number; old: Buffer };
  op?: string;
}

/** States whose undo data is kept: a point found wrong is compared with the states of its time. */
const UNDO_STATES = 300;

/**
 * The primary's disk as the campaign knows it: every guest write goes through here, is applied to
 * an in-memory copy, and the copy's SHA-256 is kept per state. A point is checked against these
 * states (byte for byte, by hash) and against the time window in which each existed.
 */
export class PrimaryModel {
  readonly states: PrimaryState[] = [];
  private readonly byHash = new Map<string, number[]>();
  private readonly image: Buffer;
  private writing: Promise<void> = Promise.resolve();
  private running = false;
  private loop: Promise<void> | undefined;
  writes = 0;
  writeErrors: string[] = [];

  constructor(
    private readonly vm: StorageDaemonVm,
    readonly diskBytes: number,
    private readonly rng: Rng,
    private readonly scratch: string,
  ) {
    this.image = Buffer.alloc(diskBytes);
    this.record(0, 0);
  }

  private record(startedAt: number, doneAt: number, undo?: { offset: number; old: Buffer }, op?: string): void {
    const hash = createHash("sha256").update(this.image).digest("hex");
    const index = this.states.length;
    this.states.push({ index, hash, startedAt, doneAt, undo, op });
    const old = this.states[index - UNDO_STATES];
    if (old) old.undo = undefined;
    this.byHash.set(hash, [...(this.byHash.get(hash) ?? []), index]);
  }

  get current(): PrimaryState {
    return this.states.at(-1)!;
  }

  statesWithHash(hash: string): number[] {
    return this.byHash.get(hash) ?? [];
  }

  /** A write of a pattern (or zeroes) at a 4 KiB-aligned place; `big`: MiBs of random data. */
  async write(kind: "small" | "big"): Promise<void> {
    const run = this.writing.then(() => this.doWrite(kind));
    this.writing = run.catch(() => undefined);
    return run;
  }

  private async doWrite(kind: "small" | "big"): Promise<void> {
    const len = kind === "big" ? this.rng.int(2, 6) * MiB : this.rng.int(1, 64) * 4 * KiB;
    const offset = this.rng.int(0, (this.diskBytes - len) / (4 * KiB)) * 4 * KiB;
    let command: string;
    let apply: () => void;
    if (kind === "big") {
      const data = randomBytes(len);
      const file = join(this.scratch, "big-write.bin");
      writeFileSync(file, data);
      command = `write -s ${file} ${offset} ${len}`;
      apply = () => data.copy(this.image, offset);
    } else if (this.rng.next() < 0.1) {
      command = `write -z ${offset} ${len}`;
      apply = () => this.image.fill(0, offset, offset + len);
    } else {
      const pattern = this.rng.int(1, 255);
      command = `write -P ${pattern} ${offset} ${len}`;
      apply = () => this.image.fill(pattern, offset, offset + len);
    }
    const startedAt = Date.now();
    try {
      await this.vm.guestWrite("vda", [command]);
    } catch (err) {
      // A guest write that fails is an invariant violation (7) unless the primary was down.
      this.writeErrors.push(`${command}: ${(err as Error).message.split("\n")[0]}`);
      throw err;
    }
    const undo = { offset, old: Buffer.from(this.image.subarray(offset, offset + len)) };
    apply();
    this.writes++;
    this.record(startedAt, Date.now(), undo, command);
  }

  /** The disk as it was in state `index`, rebuilt from the undo data; undefined when that is no longer kept. */
  imageAt(index: number): Buffer | undefined {
    const img = Buffer.from(this.image);
    for (let i = this.states.length - 1; i > index; i--) {
      const u = this.states[i]!.undo;
      if (!u) return undefined;
      u.old.copy(img, u.offset);
    }
    return img;
  }

  /** Writes in the background, one at a time, `gapMs` apart, until `pause`. */
  resume(gapMs: () => number): void {
    if (this.running) return;
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        await this.write(this.rng.next() < 0.08 ? "big" : "small").catch(() => undefined);
        await new Promise((r) => setTimeout(r, gapMs()));
      }
    })();
  }

  /** Stops the background writes and waits for the one in progress: the disk holds still. */
  async pause(): Promise<void> {
    this.running = false;
    await this.loop;
    await this.writing;
  }

  /**
   * After a write failed (the primary was killed under it) what the disk holds is whatever QEMU had
   * written: the copy is read back from the restarted primary and recorded as a new state.
   */
  async reloadFromDisk(): Promise<void> {
    const raw = join(this.scratch, "primary-reload.raw");
    await convertImage(this.vm.guestUri("vda"), raw, { srcFormat: "raw", dstFormat: "raw" });
    const undo = { offset: 0, old: Buffer.from(this.image) };
    readFileSync(raw).copy(this.image);
    rmSync(raw, { force: true });
    const at = Date.now();
    this.record(at, at, undo, "reloaded from the restarted primary");
  }
}
