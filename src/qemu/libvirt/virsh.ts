import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { QreplicaError } from "../../common/errors.js";

/** A virsh command failed; `message` carries libvirt's own error line. */
export class LibvirtCommandError extends QreplicaError {
  readonly code = "LIBVIRT_COMMAND_FAILED" as const;
  constructor(
    readonly uri: string,
    readonly args: readonly string[],
    readonly detail: string,
  ) {
    super(`virsh -c ${uri} ${args.join(" ")}: ${detail}`);
  }
}

/**
 * libvirt through `virsh -c URI`: no native binding to build, and every call is a command an
 * operator can repeat by hand. Calls are short (milliseconds) except `start`.
 */
export class Virsh {
  constructor(
    readonly uri: string,
    private readonly timeoutMs = 120_000,
  ) {}

  run(args: readonly string[]): Promise<string> {
    const full = ["-q", "-c", this.uri, ...args];
    return new Promise((resolve, reject) => {
      const child = spawn("virsh", full, { stdio: ["ignore", "pipe", "pipe"] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on("data", (c: Buffer) => out.push(c));
      child.stderr.on("data", (c: Buffer) => err.push(c));
      const timer = setTimeout(() => child.kill("SIGKILL"), this.timeoutMs);
      child.on("error", (e: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(new LibvirtCommandError(this.uri, args, e.code === "ENOENT" ? "virsh is not installed (install Debian package libvirt-clients)" : e.message));
      });
      child.on("close", (code, signal) => {
        clearTimeout(timer);
        const stdout = Buffer.concat(out).toString("utf8");
        const stderr = Buffer.concat(err).toString("utf8").trim();
        if (code === 0) resolve(stdout);
        else
          reject(
            new LibvirtCommandError(
              this.uri,
              args,
              signal ? `killed by ${signal} after ${this.timeoutMs} ms` : stderr.replace(/^error: /gm, "").replace(/\n+/g, "; ") || `exit ${code}`,
            ),
          );
      });
    });
  }

  /** Runs a command that takes XML from a file (virsh reads no XML on stdin). */
  async withXmlFiles<T>(files: Record<string, string>, fn: (paths: Record<string, string>) => Promise<T>): Promise<T> {
    const dir = mkdtempSync(join(tmpdir(), "qreplica-virsh-"));
    try {
      const paths: Record<string, string> = {};
      for (const [name, xml] of Object.entries(files)) {
        paths[name] = join(dir, `${name}.xml`);
        writeFileSync(paths[name], xml, { mode: 0o600 });
      }
      return await fn(paths);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

/** Escapes text for an XML attribute or element. */
export function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/'/g, "&apos;").replace(/"/g, "&quot;");
}
