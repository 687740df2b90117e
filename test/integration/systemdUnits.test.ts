import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { makeTmpDir } from "../helpers/tmpDir.js";

// The units in systemd/ as systemd itself reads them. `systemd-analyze verify` also checks that
// ExecStart's program exists and is executable: the units name /opt/qreplica/bin (README's install
// prefix), so the copies verified here point at this checkout's bins instead.

const ROOT = resolve(import.meta.dirname, "../..");
const UNITS = ["qreplica-agent.service", "qreplica-site@.service"];
const analyze = spawnSync("systemd-analyze", ["--version"], { encoding: "utf8" });
const haveAnalyze = analyze.status === 0;
if (!haveAnalyze) console.warn(`systemdUnits: systemd-analyze verify skipped: systemd-analyze cannot run here (${analyze.error?.message ?? analyze.stderr})`);

const tmp = makeTmpDir("qr-units-");
afterAll(() => tmp.cleanup());

const unitText = (name: string) => readFileSync(join(ROOT, "systemd", name), "utf8");
const directives = (text: string) => text.split("\n").filter((l) => /^[A-Za-z]+=/.test(l));

describe("systemd units", () => {
  it.skipIf(!haveAnalyze)("pass systemd-analyze verify with no warning about them", () => {
    const bin = join(tmp.path, "bin");
    mkdirSync(bin);
    symlinkSync(join(ROOT, "bin/qreplica.js"), join(bin, "qreplica"));
    symlinkSync(join(ROOT, "bin/qreplica-agent.js"), join(bin, "qreplica-agent"));
    for (const unit of UNITS) writeFileSync(join(tmp.path, unit), unitText(unit).replaceAll("/opt/qreplica/bin/", `${bin}/`));
    // A template is verified through an instance of it.
    copyFileSync(join(tmp.path, "qreplica-site@.service"), join(tmp.path, "qreplica-site@a.service"));
    const r = spawnSync("systemd-analyze", ["verify", join(tmp.path, "qreplica-agent.service"), join(tmp.path, "qreplica-site@a.service")], { encoding: "utf8" });
    // Unknown keys and unparsable values are only warnings (exit 0): any line naming our units fails too.
    const complaints = `${r.stdout}${r.stderr}`.split("\n").filter((l) => l.includes("qreplica"));
    expect(complaints).toEqual([]);
    expect(r.status, r.stderr).toBe(0);
  });

  it("run the installed bins with the usual hardening; the site leaves its failover VMs and reverse agents running when it stops", () => {
    const site = directives(unitText("qreplica-site@.service"));
    const agent = directives(unitText("qreplica-agent.service"));
    expect(site).toContain("ExecStart=/opt/qreplica/bin/qreplica site serve --dir /var/lib/qreplica/%i");
    expect(agent).toContain("ExecStart=/opt/qreplica/bin/qreplica-agent --config /etc/qreplica/agent.yaml");
    for (const unit of [site, agent]) {
      for (const d of ["ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet=", "UMask=0077", "User=qreplica"])
        expect(unit).toContain(d);
      expect(unit.some((l) => l.startsWith("ReadWritePaths=/var/lib/"))).toBe(true);
      expect(unit).toContain("ExecReload=/bin/kill -HUP $MAINPID");
    }
    expect(site).toContain("KillMode=process");
  });

  it("run the bins on the Node that scripts/install.sh installs (its prefix first on the units' PATH), which is 22 or later", () => {
    const prefix = /^QR_NODE_PREFIX=\$\{QR_NODE_PREFIX:-(\S+)\}$/m.exec(readFileSync(join(ROOT, "scripts/node-env.sh"), "utf8"))?.[1];
    expect(prefix).toBe("/opt/qreplica/node");
    for (const unit of UNITS) {
      const path = directives(unitText(unit))
        .find((l) => l.startsWith("Environment=PATH="))
        ?.slice("Environment=PATH=".length);
      expect(path?.split(":")[0], unit).toBe(`${prefix}/bin`);
      // The bins' `#!/usr/bin/env node` as systemd would resolve it, on this machine as install.sh left it.
      const r = spawnSync("/usr/bin/env", ["node", "-p", "process.versions.node"], { env: { PATH: path }, encoding: "utf8" });
      expect(r.status, r.stderr).toBe(0);
      expect(Number(r.stdout.split(".")[0]), `${unit} runs Node ${r.stdout.trim()}: run scripts/install.sh`).toBeGreaterThanOrEqual(22);
    }
  });
});
