/**
 * PolicyService against a real `qreplica site serve` over mutual TLS: viewers read policies,
 * only admins apply and bind them, agents are refused everything, and every refusal is audited
 * like ControlService's. An invalid policy is refused with its fields named and records nothing.
 * A connected agent's stream gets the effective policy in HelloAck and every change pushed.
 */
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PolicyServiceClient } from "../../../src/gen/qreplica/v1/policy.js";
import type { RecordedEvent } from "../../../src/ledger/index.js";
import { policyStream } from "../../../src/policy/policyLedger.js";
import { AUDIT_STREAM } from "../../../src/site/controlPlane/refusalAudit.js";
import { issueRole, refusal, type CredentialFiles, dialArgs } from "../../helpers/controlPlane.js";
import { MiB, startSiteB, type SiteB } from "./siteB.js";

let site: SiteB;
const ids: Record<"viewer" | "operator" | "admin", CredentialFiles> = {} as never;
const clients: PolicyServiceClient[] = [];
const as = (files: CredentialFiles) => {
  const c = new PolicyServiceClient(site.address, ...dialArgs(site.address, files));
  clients.push(c);
  return c;
};

function call<Req, Res>(
  client: PolicyServiceClient,
  method: (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, new grpc.Metadata(), { deadline: Date.now() + 60_000 }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

const GOLD_V1 = "name: gold\nfrequency: 1h\ncompressionLevel: 3\n";
const GOLD_V2 =
  'name: gold\nfrequency: 1s\ncompressionLevel: 9\nbandwidth: [ { limit: 50MiB/s, window: { days: weekdays, from: "08:00", to: "18:00" } } ]\nresync: { mode: automatic, window: { from: "18:30", to: "06:00" } }\n';

beforeAll(async () => {
  site = await startSiteB("qr-sec-policy-");
  const dir = join(site.tmp, "people");
  ids.viewer = await issueRole(site.env.caDir, "vera-viewer", "viewer", dir);
  ids.operator = await issueRole(site.env.caDir, "otto-operator", "operator", dir);
  ids.admin = await issueRole(site.env.caDir, "ada-admin", "admin", dir);
}, 120_000);
afterAll(async () => {
  for (const c of clients) c.close();
  await site?.stop();
});

const audited = async (): Promise<RecordedEvent[]> => (await site.events()).filter((e) => e.stream === AUDIT_STREAM);

describe("PolicyService roles", () => {
  it("refuses viewers and operators ApplyPolicy and BindPolicy, agents everything, audits each refusal, and lets admins and viewers do theirs", async () => {
    const admin = as(ids.admin);
    const applied = await call(admin, admin.applyPolicy, { specYaml: GOLD_V1, dryRun: false });
    expect(applied).toMatchObject({ name: "gold", version: 1, changed: true });

    for (const who of [ids.viewer, ids.operator]) {
      const c = as(who);
      const a = await refusal(call(c, c.applyPolicy, { specYaml: GOLD_V2, dryRun: false }));
      expect(a.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(a.details).toMatch(/may not call ApplyPolicy: ApplyPolicy needs role admin/);
      expect((await refusal(call(c, c.bindPolicy, { vmId: "vm-p", policyName: "gold" }))).code).toBe(grpc.status.PERMISSION_DENIED);
      // Reading is a viewer's right.
      expect((await call(c, c.listPolicies, {})).policies.map((p) => p.name)).toEqual(["gold"]);
      expect((await call(c, c.getPolicy, { name: "gold", version: 0 })).version).toBe(1);
    }
    const agent = as(site.agentA);
    const refusals = [
      await refusal(call(agent, agent.applyPolicy, { specYaml: GOLD_V2, dryRun: false })),
      await refusal(call(agent, agent.bindPolicy, { vmId: "vm-p", policyName: "gold" })),
      await refusal(call(agent, agent.listPolicies, {})),
      await refusal(call(agent, agent.getPolicy, { name: "gold", version: 0 })),
    ];
    for (const r of refusals) {
      expect(r.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(r.details).toMatch(/agent certificates may only replicate/);
    }
    // Nothing the refused callers asked for happened.
    expect((await call(admin, admin.getPolicy, { name: "gold", version: 0 })).latestVersion).toBe(1);
    const events = (await audited()).map((e) => {
      const d = e.data as { identity: string; rpc: string; needed: string; reason: string; vmIds: string[] };
      return [d.identity, d.rpc, d.needed, d.reason, d.vmIds];
    });
    expect(events).toEqual([
      ["vera-viewer", "ApplyPolicy", "admin", "ROLE_INSUFFICIENT", []],
      ["vera-viewer", "BindPolicy", "admin", "ROLE_INSUFFICIENT", ["vm-p"]],
      ["otto-operator", "ApplyPolicy", "admin", "ROLE_INSUFFICIENT", []],
      ["otto-operator", "BindPolicy", "admin", "ROLE_INSUFFICIENT", ["vm-p"]],
      ["agent-a", "ApplyPolicy", "admin", "AGENT_ON_CONTROL_PLANE", []],
      ["agent-a", "BindPolicy", "admin", "AGENT_ON_CONTROL_PLANE", ["vm-p"]],
      ["agent-a", "ListPolicies", "viewer", "AGENT_ON_CONTROL_PLANE", []],
      ["agent-a", "GetPolicy", "viewer", "AGENT_ON_CONTROL_PLANE", []],
    ]);
    // The applied version names its admin in the ledger.
    const gold = (await site.events()).filter((e) => e.stream === policyStream("gold"));
    expect(gold.map((e) => [e.type, e.metadata.actor, e.metadata.actorRole])).toEqual([["PolicyApplied", "ada-admin", "admin"]]);
  });

  it("refuses an invalid policy with every field named, and records nothing", async () => {
    const admin = as(ids.admin);
    const before = (await site.events()).length;
    const r = await refusal(
      call(admin, admin.applyPolicy, { specYaml: "name: bad\nfrequency: 1hr\nretention: { tiers: [ { every: 1hr, keepFor: 2d } ] }\ncompressionLevel: 30\n", dryRun: false }),
    );
    expect(r.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(r.details).toContain('retention.tiers[0].every: "1hr" is not a duration; write e.g. 30s, 5m, 1h, 1d, 1w');
    expect(r.details).toContain("frequency:");
    expect(r.details).toContain("compressionLevel: 30 is not a zstd level");
    expect((await site.events()).length).toBe(before);
  });

  it("sends the effective policy in HelloAck and pushes changes over the open stream", async () => {
    const admin = as(ids.admin);
    const disks = [{ diskId: "vda", sizeBytes: 8 * MiB }];
    const a = site.open();
    // Unbound: no policy (the agent keeps its config's interval and level).
    expect((await a.hello({ vmId: "vm-p", generation: 0, disks })).policy).toBeUndefined();
    const bound = await call(admin, admin.bindPolicy, { vmId: "vm-p", policyName: "gold" });
    expect(bound).toMatchObject({ vmId: "vm-p", policyName: "gold", version: 1, changed: true, agentNotified: true, relationshipExists: true });
    const first = await a.expect("policyChanged");
    expect(first.policy).toMatchObject({ name: "gold", version: 1, frequency: { $case: "intervalSeconds", value: 3600 }, compressionLevel: 3 });

    const v2 = await call(admin, admin.applyPolicy, { specYaml: GOLD_V2, dryRun: false });
    expect(v2).toMatchObject({ version: 2, changed: true, notifiedVmIds: ["vm-p"] });
    expect(v2.diff).toContainEqual({ path: "frequency", from: "1h", to: "1s" });
    const second = await a.expect("policyChanged");
    expect(second.policy).toMatchObject({
      name: "gold",
      version: 2,
      frequency: { $case: "intervalSeconds", value: 1 },
      compressionLevel: 9,
      bandwidth: [{ bytesPerSecond: BigInt(50 * MiB), window: { days: [1, 2, 3, 4, 5], from: "08:00", to: "18:00" } }],
      resyncWindow: { days: [], from: "18:30", to: "06:00" },
    });
    // The same spec again: no version, no push.
    expect(await call(admin, admin.applyPolicy, { specYaml: GOLD_V2.split("\n").reverse().join("\n"), dryRun: false })).toMatchObject({
      version: 2,
      changed: false,
      notifiedVmIds: [],
    });
    a.close();

    // A new VM whose agent config names gold is bound at its first Hello and told in HelloAck.
    const b = site.open();
    const ack = await b.hello({ vmId: "vm-q", generation: 0, disks, policyName: "gold" });
    expect(ack.policy).toMatchObject({ name: "gold", version: 2 });
    b.close();
    const listed = await call(admin, admin.listPolicies, {});
    expect(listed.policies[0]).toMatchObject({ name: "gold", latestVersion: 2, frequency: "1s", boundVmIds: ["vm-p", "vm-q"] });
  });
});
