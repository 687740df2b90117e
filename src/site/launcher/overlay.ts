import { chmodSync, existsSync } from "node:fs";
import { resolve } from "node:path";
import { imageInfo } from "../../qemu/processes/qemuImg.js";
import { runTool } from "../../qemu/processes/runTool.js";
import { OverlayError } from "./errors.js";

export interface ThrowawayOverlay {
  path: string;
  /** Absolute path of the recovery point the overlay reads through to. */
  backing: string;
  virtualSize: number;
}

/**
 * Creates `qemu-img create -f qcow2 -o compat=1.1 -b <point> -F qcow2 -u <overlay> <size>`: a
 * qcow2 overlay on a recovery point's image, for a test failover (or a failover) VM to write to.
 * The point itself is never opened for writing: `-u` skips opening the backing file (it may be
 * open in the site's qemu-storage-daemon), and its size comes from `qemu-img info -U`. The
 * backing path is stored absolute. Refuses to overwrite an existing file.
 */
export async function createThrowawayOverlay(pointImage: string, overlayPath: string): Promise<ThrowawayOverlay> {
  const backing = resolve(pointImage);
  if (!existsSync(backing)) throw new OverlayError(overlayPath, `the recovery point image ${backing} does not exist`);
  if (existsSync(overlayPath)) throw new OverlayError(overlayPath, "the file already exists; remove the old overlay (ending its test failover) or choose another path");
  let info;
  try {
    info = await imageInfo(backing);
  } catch (err) {
    throw new OverlayError(overlayPath, `cannot inspect the recovery point image ${backing}: ${(err as Error).message}`, { cause: err });
  }
  if (info.format !== "qcow2") throw new OverlayError(overlayPath, `the recovery point image ${backing} is ${info.format}, expected qcow2`);
  const virtualSize = info["virtual-size"];
  try {
    await runTool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "compat=1.1", "-b", backing, "-F", "qcow2", "-u", overlayPath, String(virtualSize)]);
    // What the test or failover VM writes is guest data: ours alone whatever the umask.
    chmodSync(overlayPath, 0o600);
  } catch (err) {
    throw new OverlayError(overlayPath, (err as Error).message, { cause: err });
  }
  return { path: overlayPath, backing, virtualSize };
}
