import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { parse as parseYaml, stringify as toYaml } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { compareImages, convertImage, startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { installPackage, pointImage, type InstalledPackage } from "../helpers/installedPackage.js";
import { waitFor } from "../helpers/processes.js";
import { walkthroughSteps } from "../helpers/readmeWalkthrough.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

// The packed tarball installed into a clean prefix (test/helpers/installedPackage.ts), and the
// README's walkthrough run from the README itself with those bins only, from a directory outside
// the checkout. One install for both: it is the slow part (2 to 5 minutes).

const ROOT = resolve(import.meta.dirname, "../..");
const MiB = 1024 * 1024;
const tmp = makeTmpDir("qr-package-");
const d = (p: string) => join(tmp.path, p);
let pkg: InstalledPackage;
let vm: StorageDaemonVm | undefined;

beforeAll(() => {
  pkg = installPackage(tmp.path);
}, 900_000);

afterAll(async () => {
  await pkg?.stopAll();
  await vm?.proc.kill();
  if (!process.env.QR_KEEP) tmp.cleanup();
});

async function freePort(): Promise<number> {
  return new Promise((done, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "0.0.0.0", () => {
      const { port } = server.address() as { port: number };
      server.close(() => done(port));
    });
  });
}

describe("the packed tarball installed into a clean prefix", () => {
  it("holds compiled JavaScript and declarations, no TypeScript sources, and no tsx or typescript among its dependencies", () => {
    const { installed } = pkg;
    const files = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)]));
    const ours = files(installed).filter((f) => !f.slice(installed.length).includes("/node_modules/"));
    expect(ours.filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))).toEqual([]);
    expect(ours).toContain(join(installed, "dist/src/cli/main.js"));
    expect(ours).toContain(join(installed, "dist/src/cli/main.d.ts"));
    expect(ours).toContain(join(installed, "dist/replica-agent/main.js"));
    expect(ours).toContain(join(installed, "systemd/qreplica-site@.service"));
    expect(ours).toContain(join(installed, "systemd/qreplica-agent.service"));
    for (const dev of ["tsx", "typescript", "vitest", "@biomejs/biome"]) expect(existsSync(join(installed, "node_modules", dev)), dev).toBe(false);
  });

  it("qreplica --version and qreplica-agent --help run from any directory", () => {
    const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
    expect(pkg.qreplica(["--version"]).trim()).toBe(version);
    const agentHelp = pkg.run(pkg.bin("qreplica-agent"), ["--help"]);
    expect(agentHelp.code).toBe(0);
    expect(agentHelp.stdout).toContain("--config <file>");
  });

  it("the README walkthrough, line by line from README.md: sites on 127.0.0.2 and 127.0.0.3 over a wildcard listen, the agent from the README's config; the point is the primary's disk, byte for byte", async () => {
    const root = d("root");
    const [portA, portB] = [await freePort(), await freePort()];
    const localize = (text: string) =>
      text
        .replaceAll("site-a.example:7443", `127.0.0.2:${portA}`)
        .replaceAll("site-b.example:7443", `127.0.0.3:${portB}`)
        .replaceAll("site-a.example", "127.0.0.2")
        .replaceAll("site-b.example", "127.0.0.3")
        .replace(/(^|[\s"'=:])\/(srv|etc\/qreplica|var\/lib\/qreplica|run\/qreplica)\//gm, (_m, before: string, top: string) => `${before}${root}/${top}/`);

    mkdirSync(d("vm"));
    vm = await startStorageDaemonVm(d("vm"), [{ id: "vda", sizeBytes: 32 * MiB }]);
    await vm.guestWrite("vda", ["write -P 0x5a 0 4M", "write -P 0x6b 20M 1M"]);

    const steps = walkthroughSteps();
    const ran: string[] = [];
    for (const step of steps) {
      if (step.kind === "file") {
        const path = localize(step.path);
        mkdirSync(dirname(path), { recursive: true });
        // The README's config as written, but for the VM: the test VM's sockets and node, a 1 s interval, no guest agent or policy.
        const config = parseYaml(localize(step.text)) as { vms: Array<Record<string, unknown>>; metricsListen?: string };
        const first = config.vms[0]!;
        Object.assign(first, { qmpSocket: vm.qmpSocketPath, nbdSocket: vm.nbdSocketPath, disks: [{ id: "vda", node: "node-vda" }], intervalSeconds: 1 });
        delete first.guestAgentSocket;
        delete first.policy;
        if (config.metricsListen) config.metricsListen = "127.0.0.1:0";
        writeFileSync(path, toYaml(config));
        continue;
      }
      let argv = step.argv.map(localize);
      const listen = argv.indexOf("--listen");
      if (listen >= 0) argv[listen + 1] = argv[listen + 1]!.replace(":7443", `:${argv.includes("site-a") ? portA : portB}`);
      // The parents an operator would have: /srv, /etc/qreplica.
      for (const flag of ["--dir", "--out-dir"]) if (argv.includes(flag)) mkdirSync(dirname(argv[argv.indexOf(flag) + 1]!), { recursive: true });
      const [name, ...args] = argv as ["qreplica" | "qreplica-agent", ...string[]];
      argv = args;
      ran.push(step.line);
      if (step.background) {
        pkg.daemon(name, argv, d(`daemon-${ran.length}.log`));
        if (name === "qreplica") {
          // A site: serving once it has written the address peers dial.
          const dir = argv[argv.indexOf("--dir") + 1]!;
          await waitFor(`${dir}'s address file`, () => (existsSync(addressFile(dir)) ? readFileSync(addressFile(dir), "utf8").trim() || undefined : undefined), 30_000);
        } else {
          // The agent: the walkthrough's next commands read the VM's points on B.
          await waitFor(
            "the initial replication on B",
            () => {
              const r = pkg.run(pkg.bin("qreplica"), ["points", "web1", "--dir", `${root}/srv/site-b`, "--json"]);
              return r.code === 0 && (JSON.parse(r.stdout) as unknown[]).length > 0 ? true : undefined;
            },
            120_000,
          );
        }
        continue;
      }
      const r = pkg.run(pkg.bin(name), argv);
      expect(r.code, `README walkthrough: '${step.line}' exited ${r.code}:\n${r.stderr}${r.stdout}`).toBe(0);
    }
    // The walkthrough is all there: a README that lost a step fails here, not silently.
    expect(ran.filter((l) => /^qreplica (site serve|authorize)|^qreplica-agent /.test(l))).toHaveLength(4);
    expect(ran).toContain("qreplica ledger verify --dir /srv/site-b");

    const siteB = `${root}/srv/site-b`;
    // The wildcard is where the sites listen, never what peers are told to dial.
    expect(readFileSync(addressFile(siteB), "utf8").trim()).toBe(`127.0.0.3:${portB}`);
    expect(readFileSync(addressFile(`${root}/srv/site-a`), "utf8").trim()).toBe(`127.0.0.2:${portA}`);

    // A quiet write, then a point cut after it: that point is the primary's disk, byte for byte.
    type Point = { recoveryPointId: string; cutoffTime: string };
    const points = () => JSON.parse(pkg.qreplica(["points", "web1", "--dir", siteB, "--json"])) as Point[];
    await vm.guestWrite("vda", ["write -P 0x7c 8M 2M", "write -z 0 64k"]);
    const writtenAt = Date.now();
    await convertImage(vm.guestUri("vda"), d("primary.raw"), { srcFormat: "raw", dstFormat: "raw" });
    const point = await waitFor("a point cut after the write", () => points().find((p) => Date.parse(p.cutoffTime) > writtenAt), 90_000);
    const image = await pointImage(siteB, "web1", point.recoveryPointId);
    expect((await compareImages(image, d("primary.raw"), { formatA: "qcow2", formatB: "raw" })).detail).toMatch(/identical/i);

    const status = JSON.parse(pkg.qreplica(["status", "--dir", siteB, "--json"])) as { relationships: Array<{ vmId: string; primarySiteId: string }> };
    expect(status.relationships.map((r) => [r.vmId, r.primarySiteId])).toEqual([["web1", "site-a"]]);
    const events = JSON.parse(pkg.qreplica(["events", "web1", "--dir", siteB, "--json"])) as { events: Array<{ type: string }> };
    expect(events.events.map((e) => e.type)).toContain("CycleCommitted");

    // An operator's own certificate, used from "another host": only the site's address and the CA.
    const ca = `${root}/srv/ca`;
    pkg.qreplica(["pki", "issue", "--ca-dir", ca, "--name", "alice", "--role", "operator", "--out-dir", d("alice")]);
    const asAlice = ["--site", `127.0.0.3:${portB}`, "--ca", `${ca}/ca.crt`, "--cert", d("alice/alice.crt"), "--key", d("alice/alice.key")];
    expect(JSON.parse(pkg.qreplica(["whoami", ...asAlice, "--json"]))).toMatchObject({ identity: "alice", role: "operator", siteId: "site-b" });
    const refused = pkg.run(pkg.bin("qreplica"), ["authorize", "--primary", "agent-z", ...asAlice]);
    expect(refused.code).toBe(5);
    expect(refused.stderr + refused.stdout).toMatch(/needs role admin/);
    await pkg.stopAll();
  });

  it("the compiled site starts reverse agents from the compiled agent, not through tsx", async () => {
    // ReverseAgents as the installed site module holds it, run by plain node: an agent whose VM
    // socket does not exist fails at once, and its log shows which entry point ran.
    const script = `
      import { ReverseAgents } from ${JSON.stringify(join(pkg.installed, "dist/src/site/failover/reverseAgent.js"))};
      const logger = { info() {}, warn() {}, error() {}, child() { return logger; } };
      const agents = new ReverseAgents(${JSON.stringify(d("reverse-run"))}, logger);
      const info = agents.start({ siteId: "site-b", vmId: "web9", qmpSocket: ${JSON.stringify(d("nowhere.sock"))}, disks: [{ diskId: "vda" }],
        replicaAddress: "127.0.0.1:9", replicaSiteId: "site-a", tls: { caFile: "ca.crt", certFile: "x.crt", keyFile: "x.key" },
        vmSpec: {}, intervalSeconds: 30, generation: 1 });
      agents.detach();
      console.log(JSON.stringify(info));`;
    const r = pkg.run(process.execPath, ["--input-type=module", "-e", script]);
    expect(r.code, r.stderr).toBe(0);
    const info = JSON.parse(r.stdout) as { pid: number; logFile: string };
    const log = await waitFor(
      "the reverse agent's log",
      () => {
        const text = existsSync(info.logFile) ? readFileSync(info.logFile, "utf8") : "";
        return /^qreplica-agent: /m.test(text) ? text : undefined;
      },
      30_000,
    );
    expect(log).not.toMatch(/tsx|ERR_MODULE_NOT_FOUND|Unknown file extension/);
    try {
      process.kill(info.pid, "SIGKILL");
    } catch {
      // it ended by itself: its config's TLS files do not exist
    }
  });
});
