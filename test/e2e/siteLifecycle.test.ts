import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { stringify as toYaml } from "yaml";
import { afterEach, describe, expect, it } from "vitest";
import { controlClient } from "../../src/cli/siteClient.js";
import { processAlive } from "../../src/site/failover/processes.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { certificateIdentity } from "../../src/transport/pki.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { AGENT, runCli, startDaemon, waitFor } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
let env: TwoSites | undefined;
let cleanup: (() => void) | undefined;
afterEach(async () => {
  await env?.stopAll();
  if (!process.env.QR_KEEP) cleanup?.();
  env = undefined;
});

async function twoSites(): Promise<TwoSites> {
  const tmp = makeTmpDir("qr-life-");
  cleanup = tmp.cleanup;
  env = await setupTwoSites(tmp.path, { diskBytes: 8 * MiB, intervalSeconds: 1 });
  return env;
}

const daemonPid = (siteDir: string) => Number(readFileSync(join(siteDir, "run", "storage-daemon.pid"), "utf8").trim());

/** A control RPC called raw, to see its gRPC status code. */
function rawCall<Req>(siteDir: string, method: "getStatus" | "listRecoveryPoints" | "stopTestFailover" | "failover", req: Req): Promise<grpc.ServiceError | undefined> {
  const client = controlClient({ dir: siteDir });
  const fn = client[method] as unknown as (r: Req, m: grpc.Metadata, o: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null) => void) => void;
  return new Promise((resolve) => fn.call(client, req, new grpc.Metadata(), { deadline: Date.now() + 15_000 }, (err) => (client.close(), resolve(err ?? undefined))));
}

describe("a site's lifetime: one server per directory, nothing left behind (real processes)", { timeout: 240_000 }, () => {
  it("kill -9 of a site takes its qemu-storage-daemon and its test VMs with it", async () => {
    const t = await twoSites();
    const site = await t.startSite(t.siteB);
    const agent = t.startAgent();
    await waitFor("a recovery point", async () => ((await t.relationship()).points.length >= 1 ? true : undefined), 90_000);
    await agent.kill("SIGKILL");
    const test = await runCli(["failover", "vm1", "--test", "--dir", t.siteB, "--json"]);
    expect(test.code, test.stderr + test.stdout).toBe(0);
    const testVm = (JSON.parse(test.stdout) as { vm: { pid: number } }).vm.pid;
    const qsd = daemonPid(t.siteB);
    expect(processAlive(qsd)).toBe(true);
    expect(processAlive(testVm)).toBe(true);
    await site.kill("SIGKILL");
    await waitFor("the storage daemon and the test VM to die with their site", () => (processAlive(qsd) || processAlive(testVm) ? undefined : true), 10_000, 50);
  });

  it("a second 'site serve' on a served directory is refused, naming the pid, and changes nothing", async () => {
    const t = await twoSites();
    const site = await t.startSite(t.siteB);
    t.startAgent();
    await waitFor("two recovery points", async () => ((await t.relationship()).points.length >= 2 ? true : undefined), 90_000);
    const qsd = daemonPid(t.siteB);
    const address = readFileSync(addressFile(t.siteB), "utf8");

    const second = await runCli(["site", "serve", "--dir", t.siteB]);
    expect(second.code).not.toBe(0);
    expect(second.stderr).toContain(`site directory ${t.siteB} is already served by process ${site.child.pid}`);
    expect(second.stderr).toContain("nothing was started or changed");

    // The live site's daemon, address and replication are untouched: a cycle commits after the attempt.
    expect(processAlive(qsd)).toBe(true);
    expect(daemonPid(t.siteB)).toBe(qsd);
    expect(readFileSync(addressFile(t.siteB), "utf8")).toBe(address);
    const seq = (await t.relationship()).lastCycleSeq;
    await waitFor("two cycles committed after the refused second serve", async () => ((await t.relationship()).lastCycleSeq >= seq + 2 ? true : undefined), 60_000);
    const status = await runCli(["status", "vm1", "--dir", t.siteB, "--json"]);
    expect(JSON.parse(status.stdout).relationships[0].health).toBe("normal"); // no failed cycle
  });

  it("control RPCs refuse malformed ids with INVALID_ARGUMENT before any handler runs", async () => {
    const t = await twoSites();
    await t.startSite(t.siteB);
    const cases: Array<[Parameters<typeof rawCall>[1], object, string]> = [
      ["getStatus", { vmId: "../x" }, 'VM id "../x"'],
      ["listRecoveryPoints", { vmId: "/etc/passwd" }, 'VM id "/etc/passwd"'],
      ["stopTestFailover", { vmId: "vm1", testId: "../../t" }, 'test id "../../t"'],
      ["failover", { vmId: "vm1", kind: 2, recoveryPointId: "rp-1/../../x", startVm: false }, 'recovery point id "rp-1/../../x"'],
    ];
    for (const [method, req, text] of cases) {
      const err = await rawCall(t.siteB, method, req);
      expect(err?.code, method).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err?.details).toContain(text);
    }
  });
});

describe("the agent pins its replica site; site addresses are dialable (real processes)", { timeout: 240_000 }, () => {
  it("an agent configured for site-b refuses a server presenting site-a's certificate", async () => {
    const t = await twoSites();
    await t.startSite(t.siteA);
    const config = join(t.dir, "agent-wrong-site.yaml");
    writeFileSync(
      config,
      toYaml({
        siteId: "site-a",
        stateDir: join(t.dir, "agent-state"),
        tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
        vms: [
          {
            id: "vm1",
            qmpSocket: t.vm.qmpSocketPath,
            nbdSocket: t.vm.nbdSocketPath,
            disks: [{ id: "vda", node: "node-vda" }],
            replicaSite: readFileSync(addressFile(t.siteA), "utf8").trim(),
            replicaSiteId: "site-b",
            intervalSeconds: 1,
          },
        ],
      }),
    );
    const log = join(t.dir, "agent-wrong-site.log");
    t.daemons.push(startDaemon(AGENT, ["--config", config], log));
    await waitFor(
      "the refusal in the agent's log",
      () => (readFileSync(log, "utf8").includes('presents the identity \\"site-a\\", not the expected site \\"site-b\\"') ? true : undefined),
      60_000,
    );
    // Nothing reached site A: no relationship, no ledger event for the VM.
    expect((await t.relationship("vm1", t.siteA)).state).toBe("not-enabled");
  });

  it("--listen 0.0.0.0:0 with --san 127.0.0.2: the address file holds 127.0.0.2, the certificate names it, the CLI dials it", async () => {
    const tmp = makeTmpDir("qr-san-");
    cleanup = tmp.cleanup;
    const ca = join(tmp.path, "ca");
    const dir = join(tmp.path, "site-c");
    expect((await runCli(["pki", "create-ca", "--dir", ca])).code).toBe(0);
    const init = await runCli(["site", "init", "--dir", dir, "--name", "site-c", "--ca-dir", ca, "--listen", "0.0.0.0:0", "--san", "127.0.0.2", "--json"]);
    expect(init.code, init.stderr).toBe(0);
    const cert = certificateIdentity(readFileSync(join(dir, "tls", "site-c.crt")));
    expect(cert.sans).toEqual(expect.arrayContaining(["site-c", "127.0.0.2", "localhost", "127.0.0.1"]));
    expect(cert.sans).not.toContain("0.0.0.0");

    const site = startDaemon((await import("../helpers/processes.js")).CLI, ["site", "serve", "--dir", dir], join(tmp.path, "site-c.log"));
    try {
      const address = await waitFor(
        "the address file",
        () => {
          try {
            return readFileSync(addressFile(dir), "utf8").trim() || undefined;
          } catch {
            return undefined;
          }
        },
        30_000,
      );
      expect(address).toMatch(/^127\.0\.0\.2:\d+$/);
      expect(address).not.toContain("0.0.0.0");
      const status = await runCli(["status", "--dir", dir, "--json"]);
      expect(status.code, status.stderr).toBe(0);
      expect(JSON.parse(status.stdout)).toMatchObject({ siteId: "site-c" });
    } finally {
      await site.kill("SIGTERM");
    }
  });
});
