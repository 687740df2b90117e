import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { afterEach, describe, expect, it } from "vitest";
import { getSqliteEventStore, loadRelationship } from "../../src/ledger/index.js";
import { compareImages, convertImage, startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { AGENT, CLI, runCli, startDaemon, waitFor, type Daemon } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

// The README's "Walkthrough: two sites and one VM", command for command, with the two sites
// addressed by IPs that are not localhost (127.0.0.2 and 127.0.0.3, named by --san) and listening
// on the wildcard address, as they would on two hosts.

const MiB = 1024 * 1024;
const daemons: Daemon[] = [];
let vm: StorageDaemonVm | undefined;
let cleanup: (() => void) | undefined;

afterEach(async () => {
  for (const d of daemons.splice(0)) await d.kill("SIGTERM");
  await vm?.proc.kill();
  vm = undefined;
  if (!process.env.QR_KEEP) cleanup?.();
});

async function qreplica(args: string[]): Promise<string> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} exited ${r.code}: ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "0.0.0.0", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** The point's top image on disk, as the site's ledger records it. */
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

interface PointJson {
  recoveryPointId: string;
  cutoffTime: string;
}

describe("README walkthrough on two addresses that are not localhost", () => {
  it("init, authorize, serve, agent: points arrive over 127.0.0.3, byte-identical; status, events, ledger verify and an operator's own certificate work", async () => {
    const tmp = makeTmpDir("qr-walkthrough-");
    cleanup = tmp.cleanup;
    const d = (p: string) => join(tmp.path, p);
    const [portA, portB] = [await freePort(), await freePort()];

    await qreplica(["pki", "create-ca", "--dir", d("ca")]);
    await qreplica(["site", "init", "--dir", d("site-a"), "--name", "site-a", "--ca-dir", d("ca"), "--listen", `0.0.0.0:${portA}`, "--san", "127.0.0.2"]);
    await qreplica(["site", "init", "--dir", d("site-b"), "--name", "site-b", "--ca-dir", d("ca"), "--listen", `0.0.0.0:${portB}`, "--san", "127.0.0.3"]);
    await qreplica(["pki", "issue", "--ca-dir", d("ca"), "--name", "agent-a", "--out-dir", d("agent-tls")]);
    await qreplica(["authorize", "--dir", d("site-b"), "--primary", "agent-a"]);
    for (const site of ["site-a", "site-b"]) {
      daemons.push(startDaemon(CLI, ["site", "serve", "--dir", d(site)], d(`${site}.log`)));
    }
    const addressB = await waitFor(
      "site B's address file",
      () => (existsSync(addressFile(d("site-b"))) ? readFileSync(addressFile(d("site-b")), "utf8").trim() || undefined : undefined),
      30_000,
    );
    await waitFor("site A's address file", () => (existsSync(addressFile(d("site-a"))) ? true : undefined), 30_000);
    // The wildcard is where the site listens, never what peers are told to dial.
    expect(addressB).toBe(`127.0.0.3:${portB}`);
    expect(readFileSync(addressFile(d("site-a")), "utf8").trim()).toBe(`127.0.0.2:${portA}`);

    mkdirSync(d("vm"), { recursive: true });
    vm = await startStorageDaemonVm(d("vm"), [{ id: "vda", sizeBytes: 32 * MiB }]);
    await vm.guestWrite("vda", ["write -P 0x5a 0 4M", "write -P 0x6b 20M 1M"]);
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
            replicaSite: `127.0.0.3:${portB}`,
            replicaSiteId: "site-b",
            intervalSeconds: 1,
            compressionLevel: 1,
          },
        ],
      }),
    );
    daemons.push(startDaemon(AGENT, ["--config", d("agent.yaml")], d("agent.log")));

    const pointsOnB = async () => JSON.parse(await qreplica(["points", "web1", "--dir", d("site-b"), "--json"])) as PointJson[];
    await waitFor(
      "the initial replication on B",
      async () => ((await runCli(["points", "web1", "--dir", d("site-b"), "--json"])).code === 0 && (await pointsOnB()).length > 0 ? true : undefined),
      90_000,
    );

    // A quiet write, then a point cut after it: that point is the primary's disk, byte for byte.
    await vm.guestWrite("vda", ["write -P 0x7c 8M 2M", "write -z 0 64k"]);
    const writtenAt = Date.now();
    const snapshot = d("primary.raw");
    await convertImage(vm.guestUri("vda"), snapshot, { srcFormat: "raw", dstFormat: "raw" });
    const point = await waitFor("a point cut after the write", async () => (await pointsOnB()).find((p) => Date.parse(p.cutoffTime) > writtenAt), 90_000);
    const image = await pointImage(d("site-b"), "web1", point.recoveryPointId);
    expect((await compareImages(image, snapshot, { formatA: "qcow2", formatB: "raw" })).detail).toMatch(/identical/i);

    const status = JSON.parse(await qreplica(["status", "--dir", d("site-b"), "--json"])) as { relationships: Array<{ vmId: string; primarySiteId: string }> };
    expect(status.relationships.map((r) => [r.vmId, r.primarySiteId])).toEqual([["web1", "site-a"]]);
    const events = JSON.parse(await qreplica(["events", "web1", "--dir", d("site-b"), "--json"])) as { events: Array<{ type: string }> };
    expect(events.events.map((e) => e.type)).toContain("CycleCommitted");
    await qreplica(["ledger", "verify", "--dir", d("site-b")]);

    // An operator's own certificate, used from "another host": only the site's address and the CA.
    await qreplica(["pki", "issue", "--ca-dir", d("ca"), "--name", "alice", "--role", "operator", "--out-dir", d("alice")]);
    const asAlice = ["--site", `127.0.0.3:${portB}`, "--ca", d("ca/ca.crt"), "--cert", d("alice/alice.crt"), "--key", d("alice/alice.key")];
    const who = JSON.parse(await qreplica(["whoami", ...asAlice, "--json"])) as { identity: string; role: string; siteId: string };
    expect(who).toMatchObject({ identity: "alice", role: "operator", siteId: "site-b" });
    const refused = await runCli(["authorize", "--primary", "agent-z", ...asAlice]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr + refused.stdout).toMatch(/needs role admin/);
  });
});
