import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";
import { QreplicaError } from "../common/errors.js";
import { ID_PATTERN } from "../model/index.js";

/**
 * Initial replication by media: the primary's agent writes each disk at one cut-off to a
 * directory (a raw sparse image per disk) with this manifest; the replica site imports it as the
 * VM's first point. Nothing but the manifest's facts ties the two: the checksums prove the images
 * arrived whole, the cut-off sequence and generation place the point in the relationship.
 */
export const EXPORT_MANIFEST = "manifest.json";
export const EXPORT_FORMAT = "qreplica-export/1";

const idField = z.string().regex(ID_PATTERN);
const manifestSchema = z.strictObject({
  format: z.literal(EXPORT_FORMAT),
  vmId: idField,
  primarySiteId: z.string().min(1),
  generation: z.number().int().min(1),
  cycleSeq: z.number().int().min(1),
  cutoffAt: z.iso.datetime({ offset: true }),
  consistency: z.enum(["application", "crash"]),
  exportedAt: z.iso.datetime({ offset: true }),
  disks: z
    .array(
      z.strictObject({
        diskId: idField,
        sizeBytes: z.number().int().min(0),
        /** The raw image's name in the export directory (no path). */
        file: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*\.raw$/),
        /** SHA-256 of the disk's content at the cut-off (the raw image's bytes). */
        sha256: z.string().regex(/^[0-9a-f]{64}$/),
      }),
    )
    .min(1),
});

export type ExportManifest = z.infer<typeof manifestSchema>;

/** An export directory that cannot become the VM's first point: why, and what to do. */
export class ExportUnusableError extends QreplicaError {
  readonly code = "EXPORT_UNUSABLE" as const;
  constructor(
    readonly dir: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`export ${dir}: ${detail}`, options);
  }
}

export function readExportManifest(dir: string): ExportManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(join(dir, EXPORT_MANIFEST), "utf8"));
  } catch (err) {
    throw new ExportUnusableError(
      dir,
      `${EXPORT_MANIFEST} cannot be read (${(err as Error).message}); the agent writes it last, so an export without it is unfinished: let the agent finish it`,
      { cause: err },
    );
  }
  const r = manifestSchema.safeParse(raw);
  if (!r.success) {
    const problems = r.error.issues.map((i) => `${i.path.join(".") || "(top)"}: ${i.message}`).join("; ");
    throw new ExportUnusableError(dir, `${EXPORT_MANIFEST} is not a ${EXPORT_FORMAT} manifest: ${problems}`);
  }
  return r.data;
}

/** Written last and renamed into place: a manifest exists only for a complete export. */
export function writeExportManifest(dir: string, manifest: ExportManifest): void {
  const path = join(dir, EXPORT_MANIFEST);
  writeFileSync(`${path}.partial`, `${JSON.stringify(manifestSchema.parse(manifest), null, 2)}\n`, { mode: 0o600 });
  fsyncFile(`${path}.partial`);
  renameSync(`${path}.partial`, path);
  fsyncFile(dir);
}

export function fsyncFile(path: string): void {
  const fd = openSync(path, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
