import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ControlServiceService, FailoverKind, type ControlServiceClient } from "../../../src/gen/qreplica/v1/control.js";
import { MonitoringServiceClient, MonitoringServiceService, type MeasureResponse } from "../../../src/gen/qreplica/v1/monitoring.js";
import { PolicyServiceService } from "../../../src/gen/qreplica/v1/policy.js";
import { HEALTH_STREAM_PREFIX } from "../../../src/site/health/monitor.js";
import { getSqliteEventStore, type RecordedEvent } from "../../../src/ledger/index.js";
import { RejectReason } from "../../../src/gen/qreplica/v1/replication.js";
import { AUTHORIZATIONS_STREAM } from "../../../src/site/authorizations.js";
import { AUDIT_STREAM } from "../../../src/site/controlPlane/refusalAudit.js";
import { addressFile, authorizationsFile, loadSiteConfig } from "../../../src/site/siteConfig.js";
import { call, controlClientAs, issueRole, rawCall, refusal, type CredentialFiles, dialArgs } from "../../helpers/controlPlane.js";
import { runCli } from "../../helpers/processes.js";
import { fileCredentials, msg } from "../../helpers/protocolClient.js";
import { ExpectedDisk, MiB, initialCycle, startSiteB, type SiteB } from "./siteB.js";

// Invariant 8 against a real `qreplica site serve` over mutual TLS: every control call is allowed
// by the role bound into the caller's certificate, and every command is recorded with its caller.

let site: SiteB;
const ids: Record<"viewer" | "operator" | "admin" | "none" | "agentX", CredentialFiles> = {} as never;
const clients: ControlServiceClient[] = [];
const as = (files: CredentialFiles) => {
  const c = controlClientAs(site.address, files);
  clients.push(c);
  return c;
};

beforeAll(async () => {
  site = await startSiteB("qr-sec-roles-");
  const dir = join(site.tmp, "people");
  ids.viewer = await issueRole(site.env.caDir, "vera-viewer", "viewer", dir);
  ids.operator = await issueRole(site.env.caDir, "otto-operator", "operator", dir);
  ids.admin = await issueRole(site.env.caDir, "ada-admin", "admin", dir);
  ids.none = await issueRole(site.env.caDir, "old-cert", null, dir);
  ids.agentX = await issueRole(site.env.caDir, "agent-x", "agent", dir);
}, 120_000);
afterAll(async () => {
  for (const c of clients) c.close();
  await site?.stop();
});

const byType = (events: RecordedEvent[], type: string) => events.filter((e) => e.type === type);

async function authorizationEvents(): Promise<RecordedEvent[]> {
  const store = getSqliteEventStore({ path: site.ledgerPath, create: false });
  try {
    return await store.readStream(AUTHORIZATIONS_STREAM);
  } finally {
    await store.close();
  }
}

/** A VM with one committed point on site B, replicated by agent-a. */
async function replicatedVm(vmId: string): Promise<void> {
  const a = site.open();
  const ack = await a.hello({ vmId, generation: 0, disks: [{ diskId: "vda", sizeBytes: 8 * MiB }] });
  await initialCycle(a, { vmId, generation: Number(ack.generation), seq: 1, disk: new ExpectedDisk("vda", 8 * MiB) });
  a.close();
}

describe("agents and certificates without a role are refused on the whole control plane", () => {
  it("agent-a gets PERMISSION_DENIED on every RPC of ControlService and MonitoringService, naming itself, its role and the fix; nothing is recorded but the refusals (stream audit)", async () => {
    // The site's own health monitor records level changes (streams health-*) whenever it evaluates.
    const outsideAudit = async () => (await site.events()).filter((e) => e.stream !== AUDIT_STREAM && !e.stream.startsWith(HEALTH_STREAM_PREFIX));
    const before = (await outsideAudit()).length;
    const agent = as(site.agentA);
    const methods = [...Object.entries(ControlServiceService), ...Object.entries(MonitoringServiceService)];
    expect(methods.length).toBeGreaterThanOrEqual(19);
    for (const [name, def] of methods) {
      const r = await rawCall(agent, def.path);
      expect({ name, code: status[r.code] }).toEqual({ name, code: "PERMISSION_DENIED" });
      expect(r.details).toContain("'agent-a' (role agent)");
      expect(r.details).toContain("--role");
    }
    // The site's own certificate is an agent's too: a key taken from the data plane fails nothing over.
    const config = loadSiteConfig(site.env.siteB);
    const own = as({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile });
    const e = await refusal(call(own, own.failover, { vmId: "vm1", kind: FailoverKind.FAILOVER_KIND_UNPLANNED, recoveryPointId: "", startVm: false }));
    expect(e.code).toBe(status.PERMISSION_DENIED);
    expect(e.details).toContain("'site-b' (role agent)");
    expect((await outsideAudit()).length).toBe(before);
    const refused = (await site.events()).filter((x) => x.stream === AUDIT_STREAM).map((x) => `${String(x.data.identity)}:${String(x.data.rpc)}`);
    expect(new Set(refused)).toEqual(new Set([...methods.map(([, def]) => `agent-a:${def.path.split("/").pop()}`), "site-b:Failover"]));
  });

  it("a certificate issued without a role has no rights, and is told to re-issue with --role", async () => {
    const c = as(ids.none);
    for (const def of [...Object.values(ControlServiceService), ...Object.values(MonitoringServiceService)])
      expect((await rawCall(c, def.path)).code).toBe(status.PERMISSION_DENIED);
    const e = await refusal(call(c, c.getStatus, {}));
    expect(e.details).toContain("'old-cert' may not call GetStatus: its certificate carries no qreplica role");
    expect(e.details).toContain("qreplica pki issue --name old-cert --role viewer");
  });
});

describe("a viewer reads and is refused every command", () => {
  it("reads status, points, events, authorizations and runbook runs; WhoAmI says viewer; Failover is refused naming the role needed", async () => {
    await replicatedVm("vm-view");
    const v = as(ids.viewer);
    expect((await call(v, v.getStatus, { vmId: "vm-view" })).relationships[0]?.vmId).toBe("vm-view");
    expect((await call(v, v.listRecoveryPoints, { vmId: "vm-view" })).recoveryPoints.map((p) => p.recoveryPointId)).toEqual(["rp-1"]);
    expect((await call(v, v.listEvents, { vmId: "vm-view", fromPosition: 0n, limit: 100 })).events.map((e) => e.type)).toContain("CycleCommitted");
    expect((await call(v, v.listAuthorizations, {})).entries.map((e) => e.primaryIdentity)).toContain("agent-a");
    expect((await call(v, v.readRunbookRun, { runId: "no-such-run" })).events).toEqual([]);
    expect(await call(v, v.whoAmI, {})).toEqual({ identity: "vera-viewer", role: "viewer", siteId: "site-b" });
    const mv = new MonitoringServiceClient(site.address, ...dialArgs(site.address, ids.viewer));
    const measured = await new Promise<MeasureResponse>((resolve, reject) => mv.measure({ vmId: "vm-view" }, (err, res) => (err ? reject(err) : resolve(res))));
    mv.close();
    expect(measured.vmId).toBe("vm-view");
    expect(Number(measured.replicationSuccessCount)).toBe(1);

    const before = (await site.events("vm-view")).length;
    const e = await refusal(call(v, v.failover, { vmId: "vm-view", kind: FailoverKind.FAILOVER_KIND_UNPLANNED, recoveryPointId: "", startVm: false }));
    expect(e.code).toBe(status.PERMISSION_DENIED);
    expect(e.details).toContain("'vera-viewer' (role viewer) may not call Failover: Failover needs role operator");
    expect(e.details).toContain("qreplica pki issue --name vera-viewer --role operator");
    const commands: Array<Promise<unknown>> = [
      call(v, v.cancelFailover, { vmId: "vm-view" }),
      call(v, v.completeFailover, { vmId: "vm-view" }),
      call(v, v.stopTestFailover, { vmId: "vm-view", testId: "" }),
      call(v, v.appendRunbookEvents, { runId: "r1", events: [{ type: "RunbookRunStarted", dataJson: "{}" }], expectedVersion: -1n }),
      call(v, v.addAuthorization, { primaryIdentity: "agent-x" }),
      call(v, v.pauseReplication, { vmId: "vm-view", reason: "viewer" }),
      call(v, v.resumeReplication, { vmId: "vm-view" }),
      call(v, v.resync, { vmId: "vm-view" }),
      call(v, v.verifyPoint, { vmId: "vm-view", recoveryPointId: "", wait: false, timeoutSeconds: 0 }),
    ];
    for (const p of commands) {
      expect((await refusal(p)).code).toBe(status.PERMISSION_DENIED);
    }
    // Every other RPC of ControlService and PolicyService is a command: each is refused, naming the
    // role it needs, before its request is even read (an empty one here). A new RPC is covered
    // without a new line.
    const viewerReads = new Set(["GetStatus", "ListRecoveryPoints", "ListEvents", "ListAuthorizations", "ReadRunbookRun", "WhoAmI", "ListPolicies", "GetPolicy"]);
    const rpcs = [...Object.values(ControlServiceService), ...Object.values(PolicyServiceService)];
    const refusedToViewer = rpcs.filter((def) => !viewerReads.has(def.path.split("/").pop()!));
    expect(refusedToViewer.length).toBeGreaterThanOrEqual(18);
    for (const def of refusedToViewer) {
      const r = await rawCall(v, def.path);
      expect({ rpc: def.path, code: status[r.code] }).toEqual({ rpc: def.path, code: "PERMISSION_DENIED" });
      expect(r.details).toMatch(/'vera-viewer' \(role viewer\) may not call \w+: \w+ needs role (operator|admin)/);
    }
    for (const name of viewerReads)
      expect(
        rpcs.some((def) => def.path.endsWith(`/${name}`)),
        name,
      ).toBe(true);
    expect((await site.events("vm-view")).length).toBe(before);
  });
});

describe("an operator runs commands, each recorded with the operator, and is refused authorization changes", () => {
  it("fails over and cancels: the ledger names otto-operator (role operator) on each event; ListEvents returns it", async () => {
    await replicatedVm("vm-op");
    const o = as(ids.operator);
    const r = await call(o, o.failover, { vmId: "vm-op", kind: FailoverKind.FAILOVER_KIND_UNPLANNED, recoveryPointId: "", startVm: false });
    expect(r.recoveryPointId).toBe("rp-1");
    expect(r.generation).toBe(2n);
    expect(await call(o, o.cancelFailover, { vmId: "vm-op" })).toEqual({ state: "replicating", downstreamFenceLifted: false });

    const events = await site.events("vm-op");
    const commands = [...byType(events, "FailedOver"), ...byType(events, "FailoverCancelled")];
    expect(commands).toHaveLength(2);
    for (const e of commands) expect(e.metadata).toMatchObject({ actor: "otto-operator", actorRole: "operator" });
    // What the site did by itself (the agent's cycles) names no caller.
    for (const e of byType(events, "CycleCommitted")) expect(e.metadata.actor).toBeUndefined();

    const v = as(ids.viewer);
    const listed = (await call(v, v.listEvents, { vmId: "vm-op", fromPosition: 0n, limit: 100 })).events;
    expect(listed.filter((e) => e.type === "FailedOver").map((e) => [e.actor, e.actorRole])).toEqual([["otto-operator", "operator"]]);
  });

  it("is refused adding or removing authorization entries, naming admin", async () => {
    const o = as(ids.operator);
    const before = (await authorizationEvents()).length;
    const add = await refusal(call(o, o.addAuthorization, { primaryIdentity: "agent-x" }));
    expect(add.code).toBe(status.PERMISSION_DENIED);
    expect(add.details).toContain("'otto-operator' (role operator) may not call AddAuthorization: AddAuthorization needs role admin");
    expect((await refusal(call(o, o.removeAuthorization, { primaryIdentity: "agent-a" }))).code).toBe(status.PERMISSION_DENIED);
    // Every RPC that needs admin (as the site tells a viewer who calls it) is refused to an operator.
    const v = as(ids.viewer);
    const adminOnly: string[] = [];
    for (const def of [...Object.values(ControlServiceService), ...Object.values(PolicyServiceService)])
      if ((await rawCall(v, def.path)).details.includes("needs role admin")) adminOnly.push(def.path);
    expect(adminOnly.length).toBeGreaterThanOrEqual(4);
    for (const path of adminOnly) {
      const r = await rawCall(o, path);
      expect({ path, code: status[r.code] }).toEqual({ path, code: "PERMISSION_DENIED" });
      expect(r.details).toMatch(/'otto-operator' \(role operator\) may not call \w+: \w+ needs role admin/);
    }
    expect((await authorizationEvents()).length).toBe(before);
  });

  it("records runbook events (runbook streams and types only) with the operator; a viewer reads them back", async () => {
    const o = as(ids.operator);
    const r = await call(o, o.appendRunbookEvents, {
      runId: "run-1",
      events: [{ type: "RunbookRunStarted", dataJson: JSON.stringify({ runbook: "x", steps: [] }) }],
      expectedVersion: -1n,
    });
    expect(r.nextExpectedVersion).toBe(0n);
    const stale = await refusal(call(o, o.appendRunbookEvents, { runId: "run-1", events: [{ type: "RunbookRunStopped", dataJson: "{}" }], expectedVersion: -1n }));
    expect(stale.code).toBe(status.ABORTED);
    const forged = await refusal(call(o, o.appendRunbookEvents, { runId: "run-1", events: [{ type: "FailedOver", dataJson: "{}" }], expectedVersion: 0n }));
    expect(forged.code).toBe(status.INVALID_ARGUMENT);
    const escape = await refusal(call(o, o.appendRunbookEvents, { runId: "../replication-vm-op", events: [{ type: "RunbookRunStopped", dataJson: "{}" }], expectedVersion: -2n }));
    expect(escape.code).toBe(status.INVALID_ARGUMENT);
    const v = as(ids.viewer);
    const read = (await call(v, v.readRunbookRun, { runId: "run-1" })).events;
    expect(read.map((e) => [e.stream, e.type, e.actor, e.actorRole])).toEqual([["runbook-run-1", "RunbookRunStarted", "otto-operator", "operator"]]);
  });

  it("PrepareReverseReplication authorizes exactly the new primary, recorded with the operator; a wildcard is refused", async () => {
    const o = as(ids.operator);
    const wild = await refusal(
      call(o, o.prepareReverseReplication, {
        vmId: "vm-rev",
        generation: 2n,
        primarySiteId: "site-z",
        primaryIdentity: "*",
        disks: [{ diskId: "vda", virtualSizeBytes: BigInt(8 * MiB) }],
        seeds: [],
        vmSpecJson: "",
      }),
    );
    expect(wild.code).toBe(status.INVALID_ARGUMENT);
    expect(wild.details).toContain("wildcard");
    expect(await site.events("vm-rev")).toEqual([]);

    await call(o, o.prepareReverseReplication, {
      vmId: "vm-rev",
      generation: 2n,
      primarySiteId: "site-z",
      primaryIdentity: "site-z",
      disks: [{ diskId: "vda", virtualSizeBytes: BigInt(8 * MiB) }],
      seeds: [],
      vmSpecJson: "",
    });
    const entries = (await call(o, o.listAuthorizations, {})).entries;
    expect(entries.map((e) => e.primaryIdentity)).not.toContain("*");
    expect(entries.find((e) => e.primaryIdentity === "site-z")?.addedBy).toBe("otto-operator");
    expect(byType(await site.events("vm-rev"), "ReplicationEnabled")[0]?.metadata).toMatchObject({ actor: "otto-operator", actorRole: "operator" });
  });
});

describe("an admin manages authorization entries, in the ledger, effective at once", () => {
  it("adds agent-x (its Hello is accepted without a restart), removes it (refused again); both recorded with the admin", async () => {
    const adm = as(ids.admin);
    const added = await call(adm, adm.addAuthorization, { primaryIdentity: "agent-x" });
    expect(added.entries.find((e) => e.primaryIdentity === "agent-x")?.addedBy).toBe("ada-admin");

    const x = site.open(fileCredentials(ids.agentX));
    const ack = await x.hello({ vmId: "vm-x", generation: 0, disks: [{ diskId: "vda", sizeBytes: 8 * MiB }] });
    expect(ack.generation).toBe(1n);
    x.close();

    const removed = await call(adm, adm.removeAuthorization, { primaryIdentity: "agent-x" });
    expect(removed.entries.map((e) => e.primaryIdentity)).not.toContain("agent-x");
    const y = site.open(fileCredentials(ids.agentX));
    await y.send(msg.hello({ vmId: "vm-x2", generation: 0, disks: [{ diskId: "vda", sizeBytes: 8 * MiB }] }));
    expect((await y.expect("helloRejected")).reason).toBe(RejectReason.REJECT_REASON_UNAUTHORIZED);

    const events = (await authorizationEvents()).filter((e) => e.data.primaryIdentity === "agent-x");
    expect(events.map((e) => [e.type, e.metadata.actor, e.metadata.actorRole])).toEqual([
      ["AuthorizationAdded", "ada-admin", "admin"],
      ["AuthorizationRemoved", "ada-admin", "admin"],
    ]);
    // Hash-chained like every stream.
    expect(events[1]!.previousHash).toBe(events[0]!.hash);
  });

  it("refuses wildcards and unknown entries with the fix", async () => {
    const adm = as(ids.admin);
    for (const identity of ["*", "agent-*"]) {
      const e = await refusal(call(adm, adm.addAuthorization, { primaryIdentity: identity }));
      expect(e.code).toBe(status.INVALID_ARGUMENT);
      expect(e.details).toContain("wildcard");
      expect(e.details).toContain("qreplica authorize --dir SITE_DIR --primary");
    }
    expect((await refusal(call(adm, adm.removeAuthorization, { primaryIdentity: "nobody" }))).code).toBe(status.NOT_FOUND);
  });
});

describe("the CLI presents the site's admin certificate with --dir, or a personal one with --cert/--key", () => {
  it("whoami, authorize through the running site, events with the actor; a viewer's failover is refused", async () => {
    const who = await runCli(["whoami", "--dir", site.env.siteB]);
    expect(who.stdout.trim()).toBe("site-b-admin (role admin) on site site-b");

    const add = await runCli(["authorize", "--dir", site.env.siteB, "--primary", "agent-y", "--json"]);
    expect(add.code).toBe(0);
    expect((JSON.parse(add.stdout) as Array<{ primaryIdentity: string; addedBy: string }>).find((e) => e.primaryIdentity === "agent-y")?.addedBy).toBe("site-b-admin");
    const un = await runCli(["unauthorize", "--dir", site.env.siteB, "--primary", "agent-y", "--json"]);
    expect(un.code).toBe(0);
    expect((JSON.parse(un.stdout) as Array<{ primaryIdentity: string }>).map((e) => e.primaryIdentity)).not.toContain("agent-y");
    const wild = await runCli(["authorize", "--dir", site.env.siteB, "--primary", "*"]);
    expect(wild.code).toBe(2);
    expect(wild.stderr).toContain("is a wildcard");

    const table = await runCli(["events", "vm-op", "--dir", site.env.siteB]);
    expect(table.stdout).toMatch(/FailedOver\s+otto-operator \(operator\)/);
    const json = JSON.parse((await runCli(["events", "vm-op", "--dir", site.env.siteB, "--json", "--all"])).stdout) as {
      events: Array<{ type: string; actor: string; actorRole: string }>;
    };
    expect(json.events.find((e) => e.type === "FailoverCancelled")).toMatchObject({ actor: "otto-operator", actorRole: "operator" });

    const personal = ["--site", site.address, "--ca", ids.viewer.caFile, "--cert", ids.viewer.certFile, "--key", ids.viewer.keyFile];
    expect((await runCli(["status", "vm-op", ...personal])).code).toBe(0);
    const refused = await runCli(["failover", "vm-op", "--unplanned", "--no-start", ...personal, "--json"]);
    expect(refused.code).toBe(5);
    expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: "PERMISSION_DENIED", message: expect.stringContaining("'vera-viewer' (role viewer)") } });
  });

  it("a site that runs but does not answer on its address: authorize changes nothing, naming the site's process and the fix", async () => {
    const dir = site.env.siteB;
    const addr = addressFile(dir);
    const saved = readFileSync(addr, "utf8");
    writeFileSync(addr, "127.0.0.1:1\n"); // nobody listens there: UNAVAILABLE, as for a wrong address or a firewall
    try {
      const r = await runCli(["authorize", "--dir", dir, "--primary", "agent-z", "--json"]);
      expect(r.code).not.toBe(0);
      const { error } = JSON.parse(r.stdout) as { error: { code: string; message: string } };
      expect(error.code).toBe("SITE_RUNNING_UNREACHABLE");
      expect(error.message).toMatch(/runs \(process \d+ holds the directory\) but did not answer on its address/);
      expect(error.message).toContain("nothing was changed");
    } finally {
      writeFileSync(addr, saved);
    }
    const listed = JSON.parse((await runCli(["authorizations", "--dir", dir, "--json"])).stdout) as Array<{ primaryIdentity: string }>;
    expect(listed.map((e) => e.primaryIdentity)).not.toContain("agent-z");
  });

  it("a site that is not running: authorize writes its ledger as the local admin; an old authorizations.json is imported at start, a wildcard in it stops the start", async () => {
    const dirA = site.env.siteA; // initialised, never started
    const offline = await runCli(["authorize", "--dir", dirA, "--primary", "agent-b", "--json"]);
    expect(offline.code).toBe(0);
    expect((JSON.parse(offline.stdout) as Array<{ addedBy: string }>)[0]!.addedBy).toMatch(/^local-admin:.+@/);

    writeFileSync(authorizationsFile(dirA), JSON.stringify([{ primaryIdentity: "*", trustGroup: "default" }]));
    const refused = await runCli(["site", "serve", "--dir", dirA]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain("holds the wildcard entry '*'");
    expect(existsSync(authorizationsFile(dirA))).toBe(true);

    writeFileSync(authorizationsFile(dirA), JSON.stringify([{ primaryIdentity: "agent-c", trustGroup: "default" }]));
    await site.env.startSite(dirA);
    expect(existsSync(authorizationsFile(dirA))).toBe(false);
    expect(existsSync(`${authorizationsFile(dirA)}.imported`)).toBe(true);
    const listed = JSON.parse((await runCli(["authorizations", "--dir", dirA, "--json"])).stdout) as Array<{ primaryIdentity: string; addedBy: string }>;
    expect(listed.map((e) => e.primaryIdentity)).toEqual(["agent-b", "agent-c"]);
    expect(listed.find((e) => e.primaryIdentity === "agent-c")?.addedBy).toContain("imported");
  });
});
