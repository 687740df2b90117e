/**
 * Each config edge refuses a bad value or an unknown key through the real process, with the
 * field's path, the fix, and exit status 2 (invalid input): option values of the CLI, site.json,
 * authorizations.json and the agent config (runbook files: test/integration/runbook/cli.test.ts).
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { authorizationsFile, siteFile } from "../../src/site/siteConfig.js";
import { AGENT, runCli } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

let tmp: { path: string; cleanup(): void };
let siteDir: string;
let validSite: string;
beforeAll(async () => {
  tmp = makeTmpDir("qr-config-validation-");
  siteDir = join(tmp.path, "site-b");
  expect((await runCli(["pki", "create-ca", "--dir", join(tmp.path, "ca")])).code).toBe(0);
  expect((await runCli(["site", "init", "--dir", siteDir, "--name", "site-b", "--ca-dir", join(tmp.path, "ca"), "--listen", "127.0.0.1:0"])).code).toBe(0);
  validSite = readFileSync(siteFile(siteDir), "utf8");
});
afterAll(() => tmp.cleanup());

function runAgent(config: string): Promise<{ code: number; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, ["--import", "tsx", AGENT, "--config", config], { stdio: ["ignore", "ignore", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.on("close", (code) => done({ code: code ?? -1, stderr }));
  });
}

describe("invalid option values are refused (exit 2), never read as NaN or a default", () => {
  it("site init --max-points abc, --max-points 0, --listen without a port, --accel fast, --launcher virsh, --libvirt-uri alone", async () => {
    const init = (...extra: string[]) => runCli(["site", "init", "--dir", join(tmp.path, "never"), "--name", "x", "--ca-dir", join(tmp.path, "ca"), ...extra]);
    const abc = await init("--max-points", "abc");
    expect(abc.code).toBe(2);
    expect(abc.stderr).toContain("option '--max-points <n>' argument 'abc' is invalid. 'abc' is not a whole number from 1 to 100000");
    expect((await init("--max-points", "0")).stderr).toContain("'0' is not a whole number from 1 to 100000");
    const listen = await init("--listen", "localhost");
    expect(listen.code).toBe(2);
    expect(listen.stderr).toContain("'localhost' is not host:port");
    const accel = await init("--accel", "fast");
    expect(accel.code).toBe(2);
    expect(accel.stderr).toContain("'fast' is not one of auto, kvm, tcg");
    const launcher = await init("--launcher", "virsh");
    expect(launcher.code).toBe(2);
    expect(launcher.stderr).toContain("'virsh' is not one of qemu, libvirt");
    const uriAlone = await init("--libvirt-uri", "qemu:///system");
    expect(uriAlone.code).toBe(2);
    expect(uriAlone.stderr).toContain("--libvirt-uri is used only with --launcher libvirt");
  });

  it("events --from abc and --limit 0", async () => {
    const from = await runCli(["events", "--dir", siteDir, "--from", "abc"]);
    expect(from.code).toBe(2);
    expect(from.stderr).toContain("'abc' is not a whole number >= 0");
    expect((await runCli(["events", "--dir", siteDir, "--limit", "0"])).code).toBe(2);
  });
});

describe("config files: refused at start with the field's path and the fix (exit 2)", () => {
  it("site.json: compressionLevel 99 and an unknown key", async () => {
    writeFileSync(siteFile(siteDir), JSON.stringify({ ...JSON.parse(validSite), compressionLevel: 99, defaultMaxPionts: 5 }));
    try {
      const r = await runCli(["site", "serve", "--dir", siteDir]);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain(`${siteFile(siteDir)}: `);
      expect(r.stderr).toContain("compressionLevel: 99 is not a whole number from 1 to 19; a zstd level: 1 (fastest) to 19 (smallest)");
      expect(r.stderr).toContain("defaultMaxPionts: unknown field: did you mean 'defaultMaxPoints'?");
    } finally {
      writeFileSync(siteFile(siteDir), validSite);
    }
  });

  it("authorizations.json: an unknown key in an entry", async () => {
    writeFileSync(authorizationsFile(siteDir), JSON.stringify([{ primaryIdentity: "agent-a", storageroot: "/srv" }]));
    const r = await runCli(["site", "serve", "--dir", siteDir]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`${authorizationsFile(siteDir)}: [0].storageroot: unknown field: did you mean 'storageRoot'?`);
  });

  it("agent config: compressionLevel 99 and an unknown key", async () => {
    const config = join(tmp.path, "agent.yaml");
    writeFileSync(
      config,
      [
        "siteId: site-a",
        "stateDir: state",
        "tls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }",
        "vms:",
        "  - id: vm1",
        "    qmpSocket: qmp.sock",
        "    nbdSocket: nbd.sock",
        "    disks: [{ id: vda, node: vda }]",
        "    replicaSite: 127.0.0.1:7443",
        "    replicaSiteId: site-b",
        "    compressionLevel: 99",
        "    intervalSecs: 30",
        "",
      ].join("\n"),
    );
    const r = await runAgent(config);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(`qreplica-agent: agent config ${config}: `);
    expect(r.stderr).toContain("vms[0].compressionLevel: 99 is not a whole number from 1 to 19");
    expect(r.stderr).toContain("vms[0].intervalSecs: unknown field: did you mean 'intervalSeconds'?");
  });
});
