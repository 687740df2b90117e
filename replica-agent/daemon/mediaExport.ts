import { createHash } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "../../src/common/logger.js";
import { EXPORT_FORMAT, fsyncFile, writeExportManifest, type ExportManifest } from "../../src/storage/exportManifest.js";
import type { CaptureCycle, DiskCycle } from "../capture/index.js";
import type { AgentVmConfig } from "./agentConfig.js";

/**
 * Initial replication by media, the primary's half: the initial cut-off is written to a directory
 * (a raw sparse image per disk, then manifest.json) instead of being sent; the cut-off's change
 * tracking is kept, so once the replica site has imported the export the next cycle is an
 * incremental one against it. No disk byte crosses the network for the initial copy.
 */

/** What this agent exported last, so a restart waits for the import instead of exporting again. */
export interface ExportState {
  generation: number;
  cycleSeq: number;
  cutoffAt: string;
  dir: string;
}

const stateFile = (stateDir: string, vmId: string) => join(stateDir, `${vmId}.export.json`);

export function loadExportState(stateDir: string, vmId: string): ExportState | undefined {
  try {
    return JSON.parse(readFileSync(stateFile(stateDir, vmId), "utf8")) as ExportState;
  } catch {
    return undefined;
  }
}

function saveExportState(stateDir: string, vmId: string, s: ExportState): void {
  const path = stateFile(stateDir, vmId);
  writeFileSync(`${path}.tmp`, JSON.stringify(s), { mode: 0o600 });
  renameSync(`${path}.tmp`, path);
}

export function clearExportState(stateDir: string, vmId: string): void {
  rmSync(stateFile(stateDir, vmId), { force: true });
}

const ZEROES = Buffer.alloc(1 << 20);

/**
 * One disk at the cut-off into `<dir>/<disk>.raw`: data extents written at their offsets into a
 * sparse file (zero runs stay holes), hashed in disk order with the holes as zeroes, so the
 * digest is the disk's content whatever tool later copies the file.
 */
async function writeDisk(disk: DiskCycle, dir: string): Promise<{ file: string; sha256: string }> {
  const file = `${disk.diskId}.raw`;
  const partial = join(dir, `${file}.partial`);
  rmSync(partial, { force: true });
  const fh = await open(partial, "w", 0o600);
  const h = createHash("sha256");
  let hashed = 0;
  const zeroesTo = (end: number) => {
    while (hashed < end) {
      const n = Math.min(ZEROES.length, end - hashed);
      h.update(ZEROES.subarray(0, n));
      hashed += n;
    }
  };
  try {
    await fh.truncate(disk.sizeAtCutoff);
    for await (const e of disk.extents()) {
      if (e.offset < hashed) throw new Error(`disk ${disk.diskId}: extent at ${e.offset} arrived after ${hashed}; extents must come in offset order`);
      zeroesTo(e.offset);
      if (e.kind === "data") {
        await fh.write(e.data, 0, e.length, e.offset);
        h.update(e.data.subarray(0, e.length));
        hashed += e.length;
      } else zeroesTo(e.offset + e.length);
    }
    zeroesTo(disk.sizeAtCutoff);
    await fh.sync();
  } finally {
    await fh.close();
  }
  renameSync(partial, join(dir, file));
  return { file, sha256: h.digest("hex") };
}

/**
 * Writes the initial cycle to `dir` and confirms it to the capture layer (its bitmap then records
 * every write after the cut-off, for the first incremental cycle after the import). Any failure
 * aborts the cycle: the next attempt exports again from a new cut-off.
 */
export async function exportInitialCycle(
  cycle: CaptureCycle,
  o: { dir: string; vmId: string; primarySiteId: string; generation: number; stateDir: string; logger: Logger },
): Promise<ExportManifest> {
  const started = Date.now();
  try {
    mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    chmodSync(o.dir, 0o700);
    // A manifest from an earlier export must not describe this one's images while they are written.
    rmSync(join(o.dir, "manifest.json"), { force: true });
    const disks: ExportManifest["disks"] = [];
    for (const d of cycle.disks) disks.push({ diskId: d.diskId, sizeBytes: d.sizeAtCutoff, ...(await writeDisk(d, o.dir)) });
    fsyncFile(o.dir);
    const manifest: ExportManifest = {
      format: EXPORT_FORMAT,
      vmId: o.vmId,
      primarySiteId: o.primarySiteId,
      generation: o.generation,
      cycleSeq: cycle.seq,
      cutoffAt: cycle.cutoffAt.toISOString(),
      consistency: cycle.consistency,
      exportedAt: new Date().toISOString(),
      disks,
    };
    writeExportManifest(o.dir, manifest);
    await cycle.confirm();
    saveExportState(o.stateDir, o.vmId, { generation: o.generation, cycleSeq: cycle.seq, cutoffAt: manifest.cutoffAt, dir: o.dir });
    o.logger.info(
      { vm: o.vmId, dir: o.dir, seq: cycle.seq, bytes: disks.reduce((n, d) => n + d.sizeBytes, 0), ms: Date.now() - started },
      `initial replication exported: carry ${o.dir} to the replica site and run 'qreplica import ${o.vmId} --from DIR' there; incremental cycles follow the import`,
    );
    return manifest;
  } catch (err) {
    if (!cycle.finished) await cycle.abort(err);
    throw err;
  }
}

/**
 * The site wants an initial replication, and this VM's choice says it comes from the site's side:
 * a seed not yet registered there, or an export this agent already wrote (for this generation)
 * that is not yet imported. Returns the status to show while it waits (undefined: no wait), and
 * says so in the log once per wait (`status`: the one shown now).
 */
export function initialReplicationWaitsForSite(
  vm: AgentVmConfig,
  stateDir: string,
  ack: { generation: number; lastCycleSeq: number },
  status: string,
  logger: Logger,
): "waiting-for-seed" | "waiting-for-import" | undefined {
  const choice = vm.initialReplication;
  if (choice.kind === "seed") {
    if (status !== "waiting-for-seed") logger.info({ vm: vm.id }, `initial replication waits for a seed: run 'qreplica seed ${vm.id} --disk DISK=IMAGE' on the replica site`);
    return "waiting-for-seed";
  }
  if (choice.kind !== "export") return undefined;
  const done = loadExportState(stateDir, vm.id);
  if (!done || done.generation !== ack.generation || done.dir !== choice.dir || done.cycleSeq <= ack.lastCycleSeq) return undefined;
  if (status !== "waiting-for-import")
    logger.info(
      { vm: vm.id, dir: done.dir, seq: done.cycleSeq, cutoffAt: done.cutoffAt },
      `initial replication exported, waiting for its import: run 'qreplica import ${vm.id} --from DIR' on the replica site`,
    );
  return "waiting-for-import";
}
