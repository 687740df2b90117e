import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { stringify as toYaml } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getSqliteEventStore, loadRelationship } from "../../src/ledger/index.js";
import { compareImages, convertImage, startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { waitFor } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

// The product as an operator gets it: `npm pack` (which builds dist/), the tarball installed into an
// empty prefix with `npm install -g`, and everything after that run with the installed bins only,
// from a directory outside the checkout, on a PATH without node_modules/.bin (no tsx, no tsc).
// The native addons (better-sqlite3, zstd-napi) compile from source during the install: 2 to 5
// minutes on 2 shared cores (load average 3 to 17). Packuments come from the registry; tarballs
// from npm's cache where `npm ci` left them (--prefer-offline).

const ROOT = resolve(import.meta.dirname, "../..");
const MiB = 1024 * 1024;
const tmp = makeTmpDir("qr-package-");
const d = (p: string) => join(tmp.path, p);
const prefix = d("prefix");
const installed = join(prefix, "lib/node_modules/qreplica");
const bin = (name: string) => join(prefix, "bin", name);
const children: ChildProcess[] = [];
let vm: StorageDaemonVm | undefined;

/** The installed bins' environment: no NODE_OPTIONS (vitest's loaders), no npm_* from `npm test`, a PATH of system tools and node only. */
function installedEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("npm_") && !k.startsWith("VITEST") && k !== "NODE_OPTIONS" && k !== "NODE_PATH") env[k] = v;
  env.PATH = [join(prefix, "bin"), dirname(process.execPath), "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"].join(":");
  return env;
}

function run(command: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(command, args, { cwd: opts.cwd ?? d("work"), env: opts.env ?? installedEnv(), encoding: "utf8", maxBuffer: 64 * MiB });
  return { code: r.status ?? -1, stdout: r.stdout ?? "", stderr: `${r.stderr ?? ""}${r.error ? String(r.error) : ""}` };
}

function qreplica(args: string[]): string {
  const r = run(bin("qreplica"), args);
  if (r.code !== 0) throw new Error(`installed qreplica ${args.join(" ")} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

function daemon(name: string, args: string[], log: string): ChildProcess {
  const fd = openSync(log, "a", 0o600);
  const child = spawn(bin(name), args, { cwd: d("work"), env: { ...installedEnv(), QREPLICA_LOG_LEVEL: "debug", QREPLICA_ACCEL: "tcg" }, stdio: ["ignore", fd, fd] });
  children.push(child);
  return child;
}

beforeAll(() => {
  mkdirSync(d("work"), { recursive: true });
  mkdirSync(d("pack"));
  const started = Date.now();
  const pack = run("npm", ["pack", "--pack-destination", d("pack")], { cwd: ROOT, env: process.env });
  if (pack.code !== 0) throw new Error(`npm pack failed: ${pack.stderr}${pack.stdout}`);
  const tarball = join(d("pack"), readdirSync(d("pack")).find((f) => f.endsWith(".tgz"))!);
  const packed = Date.now();
  const env: NodeJS.ProcessEnv = { ...installedEnv(), PATH: process.env.PATH, npm_config_build_from_source: "true" };
  // The addons must be built for the Node that runs the bins (this one): its own headers, as
  // scripts/install.sh's Node 24 in /opt/qreplica/node has them, not npm's configured nodedir.
  const nodeDir = resolve(dirname(process.execPath), "..");
  if (existsSync(join(nodeDir, "include/node/node.h"))) env.npm_config_nodedir = nodeDir;
  const install = run("npm", ["install", "-g", "--prefix", prefix, "--prefer-offline", "--no-audit", "--no-fund", "--allow-scripts=better-sqlite3,zstd-napi", tarball], { env });
  if (install.code !== 0) throw new Error(`npm install of ${tarball} failed: ${install.stderr}${install.stdout}`);
  console.log(`packageInstall: npm pack (with the build) ${((packed - started) / 1000).toFixed(1)} s, npm install -g ${((Date.now() - packed) / 1000).toFixed(1)} s`);
}, 900_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  await vm?.proc.kill();
  if (!process.env.QR_KEEP) tmp.cleanup();
});

describe("the packed tarball installed into a clean prefix", () => {
  it("holds compiled JavaScript and declarations, no TypeScript sources, and no tsx or typescript among its dependencies", () => {
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

  it("qreplica --version, qreplica-agent --help, pki create-ca and site init run from any directory", () => {
    const version = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
    expect(qreplica(["--version"]).trim()).toBe(version);
    const agentHelp = run(bin("qreplica-agent"), ["--help"]);
    expect(agentHelp.code).toBe(0);
    expect(agentHelp.stdout).toContain("--config <file>");
    qreplica(["pki", "create-ca", "--dir", d("ca0")]);
    const init = JSON.parse(qreplica(["site", "init", "--dir", d("site0"), "--name", "site0", "--ca-dir", d("ca0"), "--json"])) as Record<string, unknown>;
    expect(init).toBeTypeOf("object");
    expect(existsSync(d("site0/tls/admin.crt"))).toBe(true);
  });

  it("a two-site replication with the installed bins only: the point is the primary's disk, byte for byte", async () => {
    qreplica(["pki", "create-ca", "--dir", d("ca")]);
    qreplica(["site", "init", "--dir", d("site-a"), "--name", "site-a", "--ca-dir", d("ca"), "--listen", "127.0.0.1:0"]);
    qreplica(["site", "init", "--dir", d("site-b"), "--name", "site-b", "--ca-dir", d("ca"), "--listen", "127.0.0.1:0"]);
    qreplica(["pki", "issue", "--ca-dir", d("ca"), "--name", "agent-a", "--out-dir", d("agent-tls")]);
    qreplica(["authorize", "--dir", d("site-b"), "--primary", "agent-a"]);
    daemon("qreplica", ["site", "serve", "--dir", d("site-b")], d("site-b.log"));
    const addressB = await waitFor(
      "site B's address file",
      () => (existsSync(addressFile(d("site-b"))) ? readFileSync(addressFile(d("site-b")), "utf8").trim() || undefined : undefined),
      30_000,
    );

    mkdirSync(d("vm"));
    vm = await startStorageDaemonVm(d("vm"), [{ id: "vda", sizeBytes: 16 * MiB }]);
    await vm.guestWrite("vda", ["write -P 0x5a 0 2M", "write -P 0x6b 9M 1M"]);
    writeFileSync(
      d("agent.yaml"),
      toYaml({
        siteId: "site-a",
        stateDir: d("agent-state"),
        tls: { caFile: d("ca/ca.crt"), certFile: d("agent-tls/agent-a.crt"), keyFile: d("agent-tls/agent-a.key") },
        vms: [
          {
            id: "web1",
            qmpSocket: vm.qmpSocketPath,
            nbdSocket: vm.nbdSocketPath,
            disks: [{ id: "vda", node: "node-vda" }],
            replicaSite: addressB,
            replicaSiteId: "site-b",
            intervalSeconds: 1,
            compressionLevel: 1,
          },
        ],
      }),
    );
    daemon("qreplica-agent", ["--config", d("agent.yaml")], d("agent.log"));

    type Point = { recoveryPointId: string; cutoffTime: string };
    const points = (): Point[] => {
      const r = run(bin("qreplica"), ["points", "web1", "--dir", d("site-b"), "--json"]);
      return r.code === 0 ? (JSON.parse(r.stdout) as Point[]) : [];
    };
    await waitFor("the initial replication on B", () => (points().length > 0 ? true : undefined), 90_000);
    await vm.guestWrite("vda", ["write -P 0x7c 4M 1M", "write -z 0 64k"]);
    const writtenAt = Date.now();
    await convertImage(vm.guestUri("vda"), d("primary.raw"), { srcFormat: "raw", dstFormat: "raw" });
    const point = await waitFor("a point cut after the write", () => points().find((p) => Date.parse(p.cutoffTime) > writtenAt), 90_000);

    const image = await pointImage(d("site-b"), "web1", point.recoveryPointId);
    expect((await compareImages(image, d("primary.raw"), { formatA: "qcow2", formatB: "raw" })).detail).toMatch(/identical/i);
    qreplica(["ledger", "verify", "--dir", d("site-b")]);
  });

  it("the compiled site starts reverse agents from the compiled agent, not through tsx", async () => {
    // ReverseAgents as the installed site module holds it, run by plain node: an agent whose VM
    // socket does not exist fails at once, and its log shows which entry point ran.
    const script = `
      import { ReverseAgents } from ${JSON.stringify(join(installed, "dist/src/site/failover/reverseAgent.js"))};
      const logger = { info() {}, warn() {}, error() {}, child() { return logger; } };
      const agents = new ReverseAgents(${JSON.stringify(d("reverse-run"))}, logger);
      const info = agents.start({ siteId: "site-b", vmId: "web9", qmpSocket: ${JSON.stringify(d("nowhere.sock"))}, disks: [{ diskId: "vda" }],
        replicaAddress: "127.0.0.1:9", replicaSiteId: "site-a", tls: { caFile: "ca.crt", certFile: "x.crt", keyFile: "x.key" },
        vmSpec: {}, intervalSeconds: 30, generation: 1 });
      agents.detach();
      console.log(JSON.stringify(info));`;
    const r = run(process.execPath, ["--input-type=module", "-e", script]);
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

/** The point's top image, as the site's ledger records it (read by the test, through the sources). */
async function pointImage(siteDir: string, vmId: string, pointId: string): Promise<string> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    const point = (await loadRelationship(store, vmId)).state.points.find((p) => p.pointId === pointId);
    if (!point) throw new Error(`point ${pointId} of ${vmId} is not in ${siteDir}'s ledger`);
    return point.disks[0]!.imagePath;
  } finally {
    await store.close();
  }
}
