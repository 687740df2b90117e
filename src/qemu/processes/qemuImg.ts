import { chmod } from "node:fs/promises";
import { runTool } from "./runTool.js";

export interface ImageInfo {
  "virtual-size": number;
  "actual-size"?: number;
  format: string;
  filename: string;
  "backing-filename"?: string;
  "format-specific"?: { data?: { bitmaps?: Array<{ name: string; flags: string[]; granularity: number }> } };
}

export async function createImage(path: string, sizeBytes: number, opts: { format?: "qcow2" | "raw"; backing?: string; backingFormat?: string } = {}): Promise<void> {
  const format = opts.format ?? "qcow2";
  const args = ["create", "-q", "-f", format];
  if (format === "qcow2") args.push("-o", "compat=1.1");
  if (opts.backing) args.push("-b", opts.backing, "-F", opts.backingFormat ?? "qcow2");
  args.push(path, String(sizeBytes));
  await runTool("qemu-img", args);
  // Replica, scratch and seed images hold guest data: ours alone whatever the caller's umask.
  await chmod(path, 0o600);
}

/** `-U` because the image is usually open in a running QEMU; the answer is advisory then. */
export async function imageInfo(path: string): Promise<ImageInfo> {
  const { stdout } = await runTool("qemu-img", ["info", "-U", "--output=json", path]);
  return JSON.parse(stdout) as ImageInfo;
}

export interface CompareResult {
  identical: boolean;
  detail: string;
}

/**
 * Byte-for-byte comparison of the guest-visible contents (exit 0 identical, 1 different).
 * `strict` also fails on a size mismatch instead of treating the tail as zeroes.
 */
export async function compareImages(a: string, b: string, opts: { formatA?: string; formatB?: string; strict?: boolean } = {}): Promise<CompareResult> {
  const args = ["compare", "-U"];
  if (opts.formatA) args.push("-f", opts.formatA);
  if (opts.formatB) args.push("-F", opts.formatB);
  if (opts.strict) args.push("-s");
  args.push(a, b);
  const r = await runTool("qemu-img", args, { allowExit: [0, 1] });
  return { identical: r.code === 0, detail: (r.stdout + r.stderr).trim() };
}

export async function convertImage(src: string, dst: string, opts: { srcFormat?: string; dstFormat: "raw" | "qcow2" }): Promise<void> {
  const args = ["convert", "-U"];
  if (opts.srcFormat) args.push("-f", opts.srcFormat);
  args.push("-O", opts.dstFormat, src, dst);
  await runTool("qemu-img", args);
}

export async function resizeImage(path: string, sizeBytes: number, format = "qcow2"): Promise<void> {
  await runTool("qemu-img", ["resize", "-q", "-f", format, path, String(sizeBytes)]);
}
