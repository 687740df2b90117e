import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { runTool } from "../../src/qemu/processes/runTool.js";
import { GuestBuildError, GuestDiskError } from "../errors.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const BUILD_SCRIPT = join(HERE, "build-linux-guest.sh");
const INIT_SCRIPT = join(HERE, "init.sh");
/** Git-ignored, beside the counter guest's build. */
const BUILD_ROOT = join(HERE, "..", ".build", "linux");

export interface LinuxGuestArtifacts {
  kernelPath: string;
  initrdPath: string;
  /** The Debian kernel package it boots. */
  kernelPackage: string;
}

/**
 * The Linux test guest (Debian's cloud kernel; busybox, qemu-ga and the virtio modules in an
 * initramfs), built once per version of its two scripts and cached. Building downloads two
 * Debian packages (~28 MB) with apt-get, so the first call takes a few seconds.
 */
export async function linuxGuestArtifacts(): Promise<LinuxGuestArtifacts> {
  const key = createHash("sha256").update(readFileSync(BUILD_SCRIPT)).update(readFileSync(INIT_SCRIPT)).digest("hex").slice(0, 16);
  const dir = join(BUILD_ROOT, key);
  const artifacts = (): LinuxGuestArtifacts => ({
    kernelPath: join(dir, "vmlinuz"),
    initrdPath: join(dir, "initrd.cpio"),
    kernelPackage: readFileSync(join(dir, "KERNEL"), "utf8").trim(),
  });
  if (existsSync(join(dir, "KERNEL"))) return artifacts();
  // Built aside and renamed, so parallel test workers never boot a half-written guest.
  mkdirSync(BUILD_ROOT, { recursive: true });
  const tmp = join(BUILD_ROOT, `.${key}.${randomBytes(4).toString("hex")}`);
  try {
    await runTool("bash", [BUILD_SCRIPT, tmp], { timeoutMs: 300_000 });
  } catch (err) {
    rmSync(tmp, { recursive: true, force: true });
    throw new GuestBuildError(`building the Linux test guest failed (it needs apt-get access to Debian's archive and qemu-guest-agent): ${(err as Error).message}`, { cause: err });
  }
  try {
    renameSync(tmp, dir);
  } catch (err) {
    // Another worker finished first: keep theirs.
    rmSync(tmp, { recursive: true, force: true });
    if (!existsSync(join(dir, "KERNEL"))) throw new GuestBuildError(`cannot install the Linux test guest into ${dir}`, { cause: err });
  }
  return artifacts();
}

/** A qcow2 holding one ext4 filesystem over the whole disk (the guest mounts it as /data). */
export async function makeExt4Disk(path: string, sizeMiB: number): Promise<void> {
  const raw = `${path}.raw`;
  try {
    await runTool("truncate", ["-s", `${sizeMiB}M`, raw]);
    await runTool("mkfs.ext4", ["-q", "-F", "-L", "qrdata", raw]);
    await runTool("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, path]);
  } catch (err) {
    throw new GuestDiskError(path, `cannot create an ext4 disk (needs mkfs.ext4 from e2fsprogs and qemu-img): ${(err as Error).message}`, { cause: err });
  } finally {
    rmSync(raw, { force: true });
  }
}
