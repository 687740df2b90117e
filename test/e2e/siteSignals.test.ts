import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { addressFile, adminCredentialFiles, siteFile } from "../../src/site/siteConfig.js";
import { CLI, runCli, startDaemon, waitFor, type Daemon } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

// `qreplica site serve` under systemd: SIGHUP (systemctl reload) rereads site.json and applies the
// retention defaults and health thresholds at once, names what needs a restart, refuses a broken
// file and serves on; SIGTERM (systemctl stop) stops it with status 0.

let daemon: Daemon | undefined;
let cleanup: (() => void) | undefined;
afterEach(async () => {
  await daemon?.kill("SIGTERM");
  daemon = undefined;
  if (!process.env.QR_KEEP) cleanup?.();
});

interface LogLine {
  msg?: string;
  applied?: string[];
  needRestart?: string[];
}
const logLines = (file: string): LogLine[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as LogLine)
    : [];

async function cli(args: string[]): Promise<string> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

describe("qreplica site serve signals", () => {
  it("SIGHUP applies the default retention and health thresholds live, names what needs a restart, refuses a broken site.json; SIGTERM exits 0", async () => {
    const tmp = makeTmpDir("qr-site-signals-");
    cleanup = tmp.cleanup;
    const site = join(tmp.path, "site");
    await cli(["pki", "create-ca", "--dir", join(tmp.path, "ca")]);
    await cli(["site", "init", "--dir", site, "--name", "site-x", "--ca-dir", join(tmp.path, "ca"), "--listen", "127.0.0.1:0", "--max-points", "24"]);
    const log = join(tmp.path, "site.log");
    daemon = startDaemon(CLI, ["site", "serve", "--dir", site], log);
    const address = await waitFor("the site to listen", () => (existsSync(addressFile(site)) ? readFileSync(addressFile(site), "utf8").trim() || undefined : undefined), 30_000);
    // By address with the admin's certificate: `--dir` would read site.json itself, which gets broken below.
    const admin = adminCredentialFiles(site);
    const target = ["--site", address, "--ca", join(site, "tls", "ca.crt"), "--cert", admin.certFile, "--key", admin.keyFile];
    const defaultMaxPoints = async () =>
      (JSON.parse(await cli(["policy", "show", "default", ...target, "--json"])) as { policy: { retention: { minPoints: number } } }).policy.retention.minPoints;
    expect(await defaultMaxPoints()).toBe(24);
    const reloads = () => logLines(log).filter((l) => l.msg === "site config reloaded");

    const original = JSON.parse(readFileSync(siteFile(site), "utf8")) as Record<string, unknown>;
    writeFileSync(siteFile(site), JSON.stringify({ ...original, defaultMaxPoints: 7, health: { rpoAlertSeconds: 900 }, listen: "127.0.0.1:1", launcher: "libvirt" }));
    daemon.child.kill("SIGHUP");
    await waitFor("the reload", () => (reloads().length === 1 ? true : undefined), 30_000);
    expect(reloads()[0]).toMatchObject({ applied: ["defaultMaxPoints", "health.rpoAlertSeconds"], needRestart: ["listen", "launcher"] });
    expect(await defaultMaxPoints()).toBe(7);

    writeFileSync(siteFile(site), "{ not json");
    daemon.child.kill("SIGHUP");
    await waitFor("the refusal", () => (logLines(log).some((l) => l.msg?.startsWith("reload refused")) ? true : undefined), 30_000);
    expect(await defaultMaxPoints()).toBe(7);
    expect(daemon.child.exitCode).toBeNull();

    daemon.child.kill("SIGTERM");
    expect(await daemon.exited).toBe(0);
  });
});
