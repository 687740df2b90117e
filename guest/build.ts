import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { runTool } from "../src/qemu/processes/runTool.js";
import { GuestBuildError } from "./errors.js";
import { SECTOR_BYTES } from "./record.js";

/** The counter guest's source, next to this file. */
export const COUNTER_ASM = fileURLToPath(new URL("./counter.asm", import.meta.url));
/** Where `buildCounterBootSector()` puts the binary by default (git-ignored, never committed). */
export const DEFAULT_BOOT_SECTOR_PATH = fileURLToPath(new URL("./.build/counter.bin", import.meta.url));

export interface BootSectorBuild {
  path: string;
  /** SHA-256 of the assembly source the binary was built from. */
  sourceSha256: string;
  /** true when an up-to-date binary was already at `path` and nasm did not run. */
  cached: boolean;
}

/**
 * Assembles `source` (default: counter.asm) with `nasm -f bin` into `outPath`. A stamp file
 * `<outPath>.sha256` records the source hash; when it matches and the binary is a well-formed
 * boot sector, nasm is not run again. The binary is written to a temporary name and renamed, so
 * concurrent builders (parallel test workers) never see a half-written file.
 */
export async function buildBootSector(outPath: string, opts: { source?: string } = {}): Promise<BootSectorBuild> {
  const source = opts.source ?? COUNTER_ASM;
  let text: Buffer;
  try {
    text = readFileSync(source);
  } catch (err) {
    throw new GuestBuildError(`cannot read the guest source ${source}`, { cause: err });
  }
  const sourceSha256 = createHash("sha256").update(text).digest("hex");
  const stampPath = `${outPath}.sha256`;
  if (isBootSector(outPath) && existsSync(stampPath) && readFileSync(stampPath, "utf8").trim() === sourceSha256) {
    return { path: outPath, sourceSha256, cached: true };
  }
  mkdirSync(dirname(outPath), { recursive: true });
  const tmp = join(dirname(outPath), `.${randomBytes(6).toString("hex")}.tmp`);
  try {
    await runTool("nasm", ["-f", "bin", "-o", tmp, source]);
  } catch (err) {
    rmSync(tmp, { force: true });
    const missing = (err as { cause?: NodeJS.ErrnoException }).cause?.code === "ENOENT";
    throw new GuestBuildError(missing ? "nasm is not installed (install the Debian package nasm)" : `nasm failed on ${source}: ${(err as Error).message}`, { cause: err });
  }
  if (!isBootSector(tmp)) {
    const size = statSync(tmp).size;
    rmSync(tmp, { force: true });
    throw new GuestBuildError(`${source} assembled to ${size} bytes without the 0x55AA signature at 510; a boot sector is exactly ${SECTOR_BYTES} bytes`);
  }
  renameSync(tmp, outPath);
  const stampTmp = `${tmp}.sha256`;
  writeFileSync(stampTmp, `${sourceSha256}\n`);
  renameSync(stampTmp, stampPath);
  return { path: outPath, sourceSha256, cached: false };
}

/** Builds counter.asm into guest/.build/counter.bin (or `outPath`), cached by source hash. */
export function buildCounterBootSector(outPath: string = DEFAULT_BOOT_SECTOR_PATH): Promise<BootSectorBuild> {
  return buildBootSector(outPath, { source: COUNTER_ASM });
}

function isBootSector(path: string): boolean {
  try {
    const b = readFileSync(path);
    return b.length === SECTOR_BYTES && b[510] === 0x55 && b[511] === 0xaa;
  } catch {
    return false;
  }
}
