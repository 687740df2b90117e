/**
 * A site whose launcher is libvirt still starts, and serves replication, when libvirt cannot be
 * reached: its start-up clean-up of stray test domains is logged as failed, not fatal.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { addressFile } from "../../../src/site/siteConfig.js";
import { CLI, runCli, startDaemon, waitFor, type Daemon } from "../../helpers/processes.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

let daemon: Daemon | undefined;
let cleanup: (() => void) | undefined;
afterEach(async () => {
  await daemon?.kill("SIGTERM");
  cleanup?.();
});

describe("libvirt launcher, libvirt unreachable", () => {
  it("the site starts and says what it could not do", async () => {
    const tmp = makeTmpDir("qr-lv-unreachable-");
    cleanup = tmp.cleanup;
    const site = join(tmp.path, "site");
    expect((await runCli(["pki", "create-ca", "--dir", join(tmp.path, "ca")])).code).toBe(0);
    const uri = `qemu+unix:///system?socket=${join(tmp.path, "no-libvirt.sock")}`;
    const init = await runCli([
      "site",
      "init",
      "--dir",
      site,
      "--name",
      "site-x",
      "--ca-dir",
      join(tmp.path, "ca"),
      "--listen",
      "127.0.0.1:0",
      "--launcher",
      "libvirt",
      "--libvirt-uri",
      uri,
    ]);
    expect(init.code, init.stderr).toBe(0);
    const log = join(tmp.path, "site.log");
    daemon = startDaemon(CLI, ["site", "serve", "--dir", site], log);
    await waitFor("the site to listen", () => (existsSync(addressFile(site)) ? readFileSync(addressFile(site), "utf8").trim() || undefined : undefined), 30_000);
    const logged = readFileSync(log, "utf8");
    expect(logged).toContain("cannot look for test VMs the site's previous run left (is libvirt reachable?)");
    expect(logged).toContain(uri);
    expect(daemon.child.exitCode).toBeNull();
  });
});
