import { rmSync, statSync } from "node:fs";
import { isAbsolute, join } from "node:path";
import { QreplicaError } from "../common/errors.js";
import { commitCycle, executeCommand, pointIdFor, startInitialReplication, type RelationshipState } from "../ledger/index.js";
import { requireId } from "../model/index.js";
import { ExportUnusableError, readExportManifest, type ExportManifest } from "../storage/exportManifest.js";
import { copySeed, hashExportedImage, importBaseImages, writeImportedIndex } from "../storage/initialImages.js";
import { resyncChunkBytes } from "../transport/index.js";
import type { ChunkDigestName } from "../common/chunkDigest.js";
import { actorMetadata, type Caller } from "./controlPlane/caller.js";
import type { SiteContext } from "./siteContext.js";

/**
 * Initial replication without sending the disks over the network: from a seed this site already
 * holds (a restored backup, an old copy: the first cycle compares and only differing chunks
 * travel), or from the primary's export carried on media (it becomes the first point; the agent
 * goes on with incremental cycles from its cut-off).
 */

/** The relationship's state does not allow this initial replication choice now: why, and the way on. */
export class InitialReplicationRefusedError extends QreplicaError {
  readonly code = "INITIAL_REPLICATION_REFUSED" as const;
  constructor(
    readonly vmId: string,
    detail: string,
  ) {
    super(`VM ${vmId}: ${detail}`);
  }
}

/** The site stream recording who registered which seed (the relationship's stream may not exist yet). */
export const seedStream = (vmId: string) => `initial-replication-${vmId}`;

function requireNoPointYet(vmId: string, s: RelationshipState, what: string): void {
  if (s.points.length > 0) {
    throw new InitialReplicationRefusedError(
      vmId,
      `already has recovery points; ${what} is for the first point only (a replica that drifted is resynchronised with 'qreplica resync ${vmId}')`,
    );
  }
  if (s.state === "initial-replication-in-progress") {
    throw new InitialReplicationRefusedError(
      vmId,
      `an initial replication (cycle ${s.inFlight?.cycleSeq ?? "?"}) is running over the network; ${what} applies only before it starts: give the agent initialReplication: seed or { export: DIR } and restart it, then try again`,
    );
  }
  if (s.state !== "not-enabled" && s.state !== "ready-for-initial-replication") {
    throw new InitialReplicationRefusedError(vmId, `is in state ${s.state}; ${what} needs a VM that has no point yet`);
  }
}

/**
 * `qreplica seed VM --disk vda=IMAGE`: copies each image into the VM's storage as the seed of the
 * first point; the agent's first cycle then compares with it (the reverse replication's way).
 */
export async function seedInitialReplication(
  ctx: SiteContext,
  request: { vmId: string; seeds: Array<{ diskId: string; imagePath: string }> },
  caller: Caller,
): Promise<{ state: string; agentNotified: boolean; localBytes: number }> {
  const vmId = requireId("VM id", request.vmId, "seed");
  if (request.seeds.length === 0) throw new InitialReplicationRefusedError(vmId, "no seed image given: name one per disk, --disk vda=/path/to/image");
  const ids = request.seeds.map((s) => requireId("disk id", s.diskId, "seed"));
  if (new Set(ids).size !== ids.length) throw new InitialReplicationRefusedError(vmId, `a disk is named twice (${ids.join(", ")}): give one image per disk`);
  for (const s of request.seeds) if (!isAbsolute(s.imagePath)) throw new InitialReplicationRefusedError(vmId, `seed ${s.imagePath} is not an absolute path on this site's host`);
  return ctx.serializer.run(vmId, async () => {
    const state = await ctx.relationships.load(vmId);
    requireNoPointYet(vmId, state, "a seed");
    for (const s of request.seeds) {
      if (state.disks.length > 0 && !state.disks.some((d) => d.diskId === s.diskId))
        throw new InitialReplicationRefusedError(vmId, `has no disk '${s.diskId}' (its disks: ${state.disks.map((d) => d.diskId).join(", ")})`);
    }
    const copies: Array<{ diskId: string; imagePath: string; sizeBytes: number; source: string }> = [];
    try {
      for (const s of request.seeds) copies.push({ ...(await copySeed(ctx.storage, vmId, s.diskId, s.imagePath)), diskId: s.diskId, source: s.imagePath });
      for (const c of copies) {
        const disk = state.disks.find((d) => d.diskId === c.diskId);
        if (disk && disk.sizeBytes !== c.sizeBytes)
          throw new InitialReplicationRefusedError(
            vmId,
            `seed ${c.source} of disk ${c.diskId} is ${c.sizeBytes} bytes, the disk is ${disk.sizeBytes}: resize a copy of it first (qemu-img resize)`,
          );
      }
    } catch (err) {
      for (const c of copies) rmSync(c.imagePath, { force: true });
      throw err;
    }
    ctx.storage.saveSeeds(
      vmId,
      copies.map((c) => ({ diskId: c.diskId, imagePath: c.imagePath })),
    );
    const version = await ctx.store.streamVersion(seedStream(vmId));
    await ctx.store.append(seedStream(vmId), [{ type: "SeedRegistered", data: { vmId, seeds: copies }, metadata: actorMetadata(caller) }], version ?? "no_stream");
    ctx.logger.info({ vm: vmId, seeds: copies, actor: caller.identity }, "seed registered: the first cycle compares with it and sends only differing chunks");
    // A connected agent waiting with initialReplication: seed starts at once; others learn it at their next Hello.
    const agentNotified = state.state === "ready-for-initial-replication" ? await ctx.notifyAgent(vmId, { $case: "resyncRequested", requestedBy: caller.identity }) : false;
    return { state: state.state, agentNotified, localBytes: copies.reduce((n, c) => n + c.sizeBytes, 0) };
  });
}

/**
 * `qreplica import VM --from DIR`: the primary's export becomes the VM's first point, recorded with
 * no byte over the network (dataBytes and wireBytes 0, importedBytes the disks' size). The agent
 * that wrote it kept change tracking from the export's cut-off: it is told to go on with
 * incremental cycles.
 */
export async function importInitialReplication(
  ctx: SiteContext,
  request: { vmId: string; exportDir: string },
  caller: Caller,
): Promise<{ state: string; agentNotified: boolean; pointId: string; cycleSeq: number; localBytes: number }> {
  const vmId = requireId("VM id", request.vmId, "import");
  const dir = request.exportDir;
  if (!isAbsolute(dir)) throw new ExportUnusableError(dir, "is not an absolute path on this site's host");
  const m = readExportManifest(dir);
  if (m.vmId !== vmId) throw new ExportUnusableError(dir, `holds VM ${m.vmId}, not ${vmId}`);
  return ctx.serializer.run(vmId, async () => {
    const state = await ctx.relationships.load(vmId);
    checkExportFits(vmId, dir, m, state);
    const started = Date.now();
    const indexes = new Map<string, { chunkBytes: number; hashes: Buffer }>();
    for (const d of m.disks) indexes.set(d.diskId, await verifyExportedDisk(dir, d, ctx.storage.indexDigest));
    const images = await importBaseImages(
      ctx.storage,
      vmId,
      m.cycleSeq,
      m.disks.map((d) => ({ diskId: d.diskId, rawPath: join(dir, d.file) })),
    );
    const metadata = actorMetadata(caller);
    const importedBytes = m.disks.reduce((n, d) => n + d.sizeBytes, 0);
    const lockSeconds = (await ctx.relationships.retentionFor(vmId)).lockSeconds;
    const lockedUntil = lockSeconds ? new Date(new Date(m.cutoffAt).getTime() + lockSeconds * 1000).toISOString() : undefined;
    let after: RelationshipState;
    const indexPaths: string[] = [];
    try {
      for (const d of m.disks) {
        const ix = indexes.get(d.diskId)!;
        indexPaths.push(writeImportedIndex(ctx.storage, vmId, d.diskId, m.cycleSeq, d.sizeBytes, ix.chunkBytes, ix.hashes));
      }
      await executeCommand(ctx.store, vmId, (s) => startInitialReplication(s, { cycleSeq: m.cycleSeq, cutoffAt: m.cutoffAt, generation: m.generation }), { metadata });
      after = (
        await executeCommand(
          ctx.store,
          vmId,
          (s) =>
            commitCycle(s, {
              cycleSeq: m.cycleSeq,
              kind: "full",
              generation: m.generation,
              cutoffAt: m.cutoffAt,
              committedAt: new Date().toISOString(),
              consistency: m.consistency,
              disks: images.map((i) => ({ diskId: i.diskId, sizeBytes: m.disks.find((d) => d.diskId === i.diskId)!.sizeBytes, imagePath: i.imagePath })),
              dataBytes: 0,
              zeroBytes: 0,
              wireBytes: 0,
              extents: 0,
              durationMs: Date.now() - started,
              importedBytes,
              ...(lockedUntil ? { lockedUntil } : {}),
            }),
          { metadata },
        )
      ).newState;
    } catch (err) {
      // Not in the ledger, so not a point (a restart would remove the images too).
      for (const p of [...images.map((i) => i.imagePath), ...indexPaths]) rmSync(p, { force: true });
      throw err;
    }
    ctx.logger.info({ vm: vmId, dir, seq: m.cycleSeq, cutoffAt: m.cutoffAt, importedBytes, actor: caller.identity }, "export imported as the first recovery point");
    const agentNotified = await ctx.notifyAgent(vmId, { $case: "replicationResumed", resume: "incremental" });
    return { state: after.state, agentNotified, pointId: pointIdFor(m.cycleSeq), cycleSeq: m.cycleSeq, localBytes: importedBytes };
  });
}

function checkExportFits(vmId: string, dir: string, m: ExportManifest, state: RelationshipState): void {
  if (state.state === "not-enabled") {
    throw new InitialReplicationRefusedError(
      vmId,
      "has no relationship on this site yet: the primary's agent registers the VM at its first connection (it does so before writing the export); start it, then import",
    );
  }
  requireNoPointYet(vmId, state, "an import");
  if (m.generation !== state.generation) {
    throw new ExportUnusableError(
      dir,
      `was written at generation ${m.generation}, the relationship is at generation ${state.generation}: the export is stale; let the agent export again`,
    );
  }
  if (m.cycleSeq <= state.lastCycleSeq) {
    throw new ExportUnusableError(dir, `has cut-off ${m.cycleSeq}, not after the relationship's last cycle ${state.lastCycleSeq}: the export is stale; let the agent export again`);
  }
  for (const d of state.disks) {
    const e = m.disks.find((x) => x.diskId === d.diskId);
    if (!e) throw new ExportUnusableError(dir, `has no image of disk ${d.diskId}`);
    if (e.sizeBytes !== d.sizeBytes) throw new ExportUnusableError(dir, `disk ${d.diskId} is ${e.sizeBytes} bytes in the export, ${d.sizeBytes} in the relationship`);
  }
  const extra = m.disks.filter((e) => !state.disks.some((d) => d.diskId === e.diskId));
  if (extra.length) throw new ExportUnusableError(dir, `holds disks the relationship does not replicate: ${extra.map((e) => e.diskId).join(", ")}`);
}

/** The image must be what the agent wrote: its size and SHA-256 (media and copies can corrupt). Returns its chunk hashes. */
async function verifyExportedDisk(dir: string, d: ExportManifest["disks"][number], digest: ChunkDigestName): Promise<{ chunkBytes: number; hashes: Buffer }> {
  const path = join(dir, d.file);
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw new ExportUnusableError(dir, `image ${d.file} of disk ${d.diskId} is missing: copy the whole export directory`, { cause: err });
  }
  if (size !== d.sizeBytes) throw new ExportUnusableError(dir, `image ${d.file} of disk ${d.diskId} is ${size} bytes, the manifest says ${d.sizeBytes}: the copy is incomplete`);
  const chunkBytes = resyncChunkBytes(d.sizeBytes);
  const { sha256, chunkHashes } = await hashExportedImage(path, chunkBytes, digest);
  if (sha256 !== d.sha256)
    throw new ExportUnusableError(dir, `image ${d.file} of disk ${d.diskId} has SHA-256 ${sha256}, the manifest says ${d.sha256}: the copy is corrupt; copy it again`);
  return { chunkBytes, hashes: chunkHashes };
}

/**
 * What a VM without a point waits for, for status: the policy's or the agent config's time, an
 * import of the primary's export, a seed. Empty when nothing holds it (or its agent is not connected).
 */
export function initialReplicationWait(ctx: SiteContext, vmId: string, now: Date): string {
  const choice = ctx.sessionFor(vmId)?.initialChoice;
  if (!choice) return "";
  const policy = ctx.policies.effectivePolicy(vmId).initialReplication;
  const policyAt = ctx.policies.effectivePolicyVersion(vmId).version > 0 && policy.kind === "at" ? new Date(policy.at) : undefined;
  const at = policyAt ?? (choice.kind === "at" ? choice.at : undefined);
  const seeded = ctx.storage.loadSeeds(vmId).length > 0;
  if (choice.kind === "export" && !seeded) return `waiting for 'qreplica import ${vmId} --from DIR' of the primary's export`;
  if (choice.kind === "seed" && !seeded) return `waiting for 'qreplica seed ${vmId} --disk DISK=IMAGE'`;
  if (at && at > now) return `scheduled for ${at.toISOString()}${policyAt ? " (policy)" : " (agent config)"}`;
  return "";
}
