import { spawn } from "node:child_process";
import { QemuToolError } from "./errors.js";

export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

const INSTALL_HINT: Record<string, string> = {
  "qemu-img": "install Debian package qemu-utils",
  "qemu-io": "install Debian package qemu-utils",
  "qemu-storage-daemon": "install Debian package qemu-system-common",
  "qemu-system-x86_64": "install Debian package qemu-system-x86",
  nbdcopy: "install Debian package libnbd-bin",
  nbdinfo: "install Debian package libnbd-bin",
};

/** Runs a tool to completion; `allowExit` lists exit codes that are answers, not failures. */
export function runTool(tool: string, args: readonly string[], opts: { allowExit?: number[]; timeoutMs?: number } = {}): Promise<ToolResult> {
  const allow = opts.allowExit ?? [0];
  return new Promise((resolve, reject) => {
    const child = spawn(tool, args, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (c: Buffer) => out.push(c));
    child.stderr.on("data", (c: Buffer) => err.push(c));
    const timer = opts.timeoutMs
      ? setTimeout(() => {
          child.kill("SIGKILL");
        }, opts.timeoutMs)
      : undefined;
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (timer) clearTimeout(timer);
      const detail = e.code === "ENOENT" ? `not installed (${INSTALL_HINT[tool] ?? "install it"})` : e.message;
      reject(new QemuToolError(tool, args, detail, { cause: e }));
    });
    child.on("close", (code, signal) => {
      if (timer) clearTimeout(timer);
      const result = { code: code ?? -1, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
      if (signal || !allow.includes(result.code)) {
        const why = signal ? `killed by ${signal}` : `exit ${result.code}`;
        reject(new QemuToolError(tool, args, `${why}: ${result.stderr.trim() || result.stdout.trim()}`));
      } else {
        resolve(result);
      }
    });
  });
}
