/**
 * Refused control calls are audited in the ledger (issue 8, item 3: "every action audited"), against
 * a real `qreplica site serve` over mutual TLS: agent and viewer certificates calling operator RPCs
 * are refused AND recorded (stream `audit`) with their identity, role, RPC, VM, role needed and
 * reason; a flood becomes one counted event; admins read them (API and CLI), viewers and operators
 * do not.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FailoverKind, type ControlServiceClient } from "../../../src/gen/qreplica/v1/control.js";
import type { RecordedEvent } from "../../../src/ledger/index.js";
import { AUDIT_STREAM } from "../../../src/site/controlPlane/refusalAudit.js";
import { call, controlClientAs, issueRole, refusal, type CredentialFiles } from "../../helpers/controlPlane.js";
import { runCli } from "../../helpers/processes.js";
import { ExpectedDisk, MiB, initialCycle, startSiteB, type SiteB } from "./siteB.js";

let site: SiteB;
const ids: Record<"viewer" | "operator" | "admin", CredentialFiles> = {} as never;
const clients: ControlServiceClient[] = [];
const as = (files: CredentialFiles) => {
  const c = controlClientAs(site.address, files);
  clients.push(c);
  return c;
};
const VM = "vm-audit";
const unplanned = { vmId: VM, kind: FailoverKind.FAILOVER_KIND_UNPLANNED, recoveryPointId: "", startVm: false };

beforeAll(async () => {
  site = await startSiteB("qr-sec-audit-");
  const dir = join(site.tmp, "people");
  ids.viewer = await issueRole(site.env.caDir, "vera-viewer", "viewer", dir);
  ids.operator = await issueRole(site.env.caDir, "otto-operator", "operator", dir);
  ids.admin = await issueRole(site.env.caDir, "ada-admin", "admin", dir);
  const a = site.open();
  const ack = await a.hello({ vmId: VM, generation: 0, disks: [{ diskId: "vda", sizeBytes: 8 * MiB }] });
  await initialCycle(a, { vmId: VM, generation: Number(ack.generation), seq: 1, disk: new ExpectedDisk("vda", 8 * MiB) });
  a.close();
}, 120_000);
afterAll(async () => {
  for (const c of clients) c.close();
  await site?.stop();
});

const audited = async (): Promise<RecordedEvent[]> => (await site.events()).filter((e) => e.stream === AUDIT_STREAM);
const summary = (e: RecordedEvent) => {
  const d = e.data as { identity: string; role: string; rpc: string; vmIds: string[]; needed: string; reason: string; count: number };
  return [d.identity, d.role, d.rpc, d.vmIds, d.needed, d.reason, d.count];
};

describe("refused control calls are recorded in the ledger's audit stream", () => {
  it("an agent and a viewer calling operator RPCs are refused, and the ledger names each: identity, role, RPC, VM, role needed, reason", async () => {
    const agent = as(site.agentA);
    const viewer = as(ids.viewer);
    expect((await refusal(call(agent, agent.failover, unplanned))).code).toBe(status.PERMISSION_DENIED);
    expect((await refusal(call(viewer, viewer.failover, unplanned))).code).toBe(status.PERMISSION_DENIED);
    expect((await refusal(call(viewer, viewer.completeFailover, { vmId: VM }))).code).toBe(status.PERMISSION_DENIED);
    // A malformed VM id is not copied into the ledger: it is counted as malformed.
    expect((await refusal(call(viewer, viewer.pauseReplication, { vmId: "../../etc", reason: "x".repeat(5000) }))).code).toBe(status.PERMISSION_DENIED);

    // On record before the caller heard the refusal: no waiting needed.
    const events = await audited();
    expect(events.map(summary)).toEqual([
      ["agent-a", "agent", "Failover", [VM], "operator", "AGENT_ON_CONTROL_PLANE", 1],
      ["vera-viewer", "viewer", "Failover", [VM], "operator", "ROLE_INSUFFICIENT", 1],
      ["vera-viewer", "viewer", "CompleteFailover", [VM], "operator", "ROLE_INSUFFICIENT", 1],
      ["vera-viewer", "viewer", "PauseReplication", [], "operator", "ROLE_INSUFFICIENT", 1],
    ]);
    expect(events[3]!.data).toMatchObject({ malformedVmIds: 1 });
    for (const e of events) {
      expect(e.type).toBe("ControlCallRefused");
      expect(e.metadata).toEqual({ actor: (e.data as { identity: string }).identity, actorRole: (e.data as { role: string }).role });
      expect((e.data as { peers: string[] }).peers).toEqual(["127.0.0.1"]);
      expect((e.data as { message: string }).message).toMatch(/may not call/);
    }
    // No secrets: neither certificate nor key material, nor the caller's free text.
    const stored = JSON.stringify(events.map((e) => [e.data, e.metadata]));
    for (const f of [site.agentA.certFile, site.agentA.keyFile, ids.viewer.certFile, ids.viewer.keyFile]) {
      const body = readFileSync(f, "utf8")
        .split("\n")
        .filter((l) => l && !l.startsWith("-----"))[1]!;
      expect(stored).not.toContain(body);
    }
    expect(stored).not.toContain("BEGIN");
    expect(stored).not.toContain("xxxxx");
    expect(stored).not.toContain("../../etc");
    // Hash-chained like every stream.
    expect(events[1]!.previousHash).toBe(events[0]!.hash);
    // The relationship itself is untouched.
    expect((await site.relationship(VM)).state).toBe("replicating");
  });

  it("an admin reads them through ListEvents and 'qreplica events --audit' (table and --json); viewers and operators do not see them", async () => {
    const adm = as(ids.admin);
    const all = (await call(adm, adm.listEvents, { fromPosition: 0n, limit: 1000 })).events;
    const refusals = all.filter((e) => e.stream === AUDIT_STREAM);
    expect(refusals.map((e) => [e.type, e.actor, e.actorRole])).toContainEqual(["ControlCallRefused", "agent-a", "agent"]);
    expect(JSON.parse(refusals[0]!.dataJson)).toMatchObject({ rpc: "Failover", vmIds: [VM], reason: "AGENT_ON_CONTROL_PLANE" });

    // Asked by stream prefix, the site returns the audit stream alone (paged by global position).
    const only = await call(adm, adm.listEvents, { fromPosition: 0n, limit: 2, streamPrefix: AUDIT_STREAM });
    expect(only.events.length).toBe(2);
    expect(only.events.every((e) => e.stream === AUDIT_STREAM)).toBe(true);
    expect(only.endReached).toBe(refusals.length <= 2);

    for (const who of [ids.viewer, ids.operator]) {
      const c = as(who);
      const seen = (await call(c, c.listEvents, { fromPosition: 0n, limit: 1000 })).events;
      expect(seen.length).toBeGreaterThan(0);
      expect(seen.filter((e) => e.stream === AUDIT_STREAM)).toEqual([]);
      const asked = await refusal(call(c, c.listEvents, { fromPosition: 0n, limit: 10, streamPrefix: AUDIT_STREAM }));
      expect(asked.code).toBe(status.PERMISSION_DENIED);
      expect(asked.details).toMatch(/admins only/);
    }

    const json = await runCli(["events", "--audit", "--dir", site.env.siteB, "--json"]);
    expect(json.code, json.stderr).toBe(0);
    const out = JSON.parse(json.stdout) as { events: Array<{ stream: string; type: string; actor: string; data: { rpc: string; identity: string } }>; more: boolean };
    expect(out.events.length).toBeGreaterThanOrEqual(4);
    expect(out.events.every((e) => e.stream === AUDIT_STREAM && e.type === "ControlCallRefused")).toBe(true);
    expect(out.events.map((e) => `${e.data.identity}:${e.data.rpc}`)).toContain("vera-viewer:CompleteFailover");
    expect(out.more).toBe(false);
    const table = await runCli(["events", "--audit", "--dir", site.env.siteB]);
    expect(table.stdout).toMatch(/audit\s+ControlCallRefused\s+agent-a \(agent\)/);
    expect(table.stdout).not.toContain("CycleCommitted");

    const personal = (f: CredentialFiles) => ["--site", site.address, "--ca", f.caFile, "--cert", f.certFile, "--key", f.keyFile];
    const refused = await runCli(["events", "--audit", ...personal(ids.viewer), "--json"]);
    expect(refused.code).toBe(5);
    expect(JSON.parse(refused.stdout)).toMatchObject({ error: { code: "PERMISSION_DENIED", message: expect.stringContaining("shown to admins only") } });
    // A viewer's plain 'events' pages past the audit stream to the events it may read.
    const viewerAll = JSON.parse((await runCli(["events", ...personal(ids.viewer), "--json", "--all"])).stdout) as { events: Array<{ stream: string; type: string }> };
    expect(viewerAll.events.some((e) => e.type === "CycleCommitted")).toBe(true);
    expect(viewerAll.events.some((e) => e.stream === AUDIT_STREAM)).toBe(false);
  });

  it("a flood of identical refusals does not grow the ledger: counted, and recorded as one event (here at the site's stop)", async () => {
    const before = (await audited()).length;
    const agent = as(site.agentA);
    for (let i = 0; i < 50; i++) expect((await refusal(call(agent, agent.failover, unplanned))).code).toBe(status.PERMISSION_DENIED);
    // Within the minute of the first refusal: nothing more recorded yet.
    expect((await audited()).length).toBe(before);
    const serve = site.env.daemons.find((d) => d.child.spawnargs.includes("serve"))!;
    await serve.kill("SIGTERM");
    expect(serve.child.signalCode ?? serve.child.exitCode).not.toBe("SIGKILL");
    const after = await audited();
    expect(after.length).toBe(before + 1);
    expect(summary(after.at(-1)!)).toEqual(["agent-a", "agent", "Failover", [VM], "operator", "AGENT_ON_CONTROL_PLANE", 50]);
    const d = after.at(-1)!.data as { firstAt: string; lastAt: string };
    expect(Date.parse(d.lastAt)).toBeGreaterThanOrEqual(Date.parse(d.firstAt));
  });
});
