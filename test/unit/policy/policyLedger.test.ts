/** Policies and bindings on the durable ledger: versions, no new version for the same spec, bindings that survive a reopen. */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { getSqliteEventStore, verifyLedger } from "../../../src/ledger/index.js";
import { PolicyBook, POLICY_APPLIED, POLICY_BOUND, bindingStream, policyStream } from "../../../src/policy/policyLedger.js";
import { parsePolicyYaml } from "../../../src/policy/schema.js";
import { UnknownPolicyError, UnknownPolicyVersionError } from "../../../src/policy/errors.js";
import { SitePolicies } from "../../../src/site/sitePolicies.js";
import { createLogger } from "../../../src/common/logger.js";

const dir = mkdtempSync(join(tmpdir(), "qreplica-policy-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const ada = { actor: "ada-admin", actorRole: "admin" };

describe("policies in the ledger", () => {
  it("versions each changed spec, records none for the same spec, and reads back after a reopen", async () => {
    const path = join(dir, "versions.db");
    let store = getSqliteEventStore({ path });
    const book = await new PolicyBook(store).load();
    const v1 = await book.apply(parsePolicyYaml("name: gold\nfrequency: 1h\ncompressionLevel: 3"), ada, { now: new Date("2026-12-04T10:00:00Z") });
    expect(v1).toMatchObject({ version: 1, changed: true });
    // The same policy written differently: no new version, nothing appended.
    const same = await book.apply(parsePolicyYaml("compressionLevel: 3\nfrequency: 60m\nname: gold\n# a comment"), ada);
    expect(same).toMatchObject({ version: 1, changed: false, diff: [] });
    const dry = await book.apply(parsePolicyYaml("name: gold\nfrequency: 1s\ncompressionLevel: 9"), ada, { dryRun: true });
    expect(dry).toMatchObject({ version: 2, changed: true });
    expect(await store.streamVersion(policyStream("gold"))).toBe(0n);
    const v2 = await book.apply(parsePolicyYaml("name: gold\nfrequency: 1s\ncompressionLevel: 9"), ada);
    expect(v2.version).toBe(2);
    expect(v2.diff).toEqual([
      { path: "frequency", from: "1h", to: "1s" },
      { path: "compressionLevel", from: "3", to: "9" },
      // The default RPO alert follows the frequency (4x, at least an hour).
      { path: "rpoAlert", from: "4h", to: "1h" },
    ]);
    await store.close();

    store = getSqliteEventStore({ path, create: false });
    const reopened = await new PolicyBook(store).load();
    expect(reopened.get("gold").version).toBe(2);
    expect(reopened.get("gold", 1).policy.frequency).toEqual({ kind: "interval", seconds: 3600 });
    expect(reopened.get("gold", 1).appliedAt).toBe("2026-12-04T10:00:00.000Z");
    expect(reopened.get("gold", 1).appliedBy).toBe("ada-admin");
    expect(() => reopened.get("gold", 3)).toThrow(UnknownPolicyVersionError);
    expect(() => reopened.get("silver")).toThrow(UnknownPolicyError);
    const events = await store.readStream(policyStream("gold"));
    expect(events.map((e) => [e.type, e.data.version, e.metadata])).toEqual([
      [POLICY_APPLIED, 1, ada],
      [POLICY_APPLIED, 2, ada],
    ]);
    expect((await verifyLedger(store)).ok).toBe(true);
    await store.close();
  });

  it("binds VMs in their own streams; a site binding wins over the agent config's, and both survive a restart", async () => {
    const path = join(dir, "bindings.db");
    const logger = createLogger("test");
    let store = getSqliteEventStore({ path });
    let policies = await SitePolicies.open(store, { defaultMaxPoints: 12 }, logger);
    await policies.book.apply(parsePolicyYaml("name: gold\nfrequency: 5m"), ada);
    await policies.book.apply(parsePolicyYaml("name: silver\nfrequency: 15m"), ada);
    // Unbound: the built-in default with the agent's own interval and level, the site's point count.
    await policies.atHello("vm1", { policyName: "", intervalSeconds: 7, compressionLevel: 2, resync: "automatic", identity: "agent-a" });
    expect(policies.effectivePolicy("vm1")).toMatchObject({
      name: "default",
      frequency: { kind: "interval", seconds: 7 },
      compressionLevel: 2,
      retention: { tiers: [], minPoints: 12 },
    });
    expect(policies.effectivePolicyVersion("vm1")).toEqual({ name: "default", version: 0 });
    expect(policies.wireFor("vm1")).toBeUndefined();

    // The agent config names gold at a first Hello: bound, recorded as the agent's doing.
    await policies.atHello("vm2", { policyName: "gold", intervalSeconds: 30, compressionLevel: 1, resync: "automatic", identity: "agent-a" });
    expect(policies.effectivePolicyVersion("vm2")).toEqual({ name: "gold", version: 1 });
    // An operator binds vm2 to silver; the agent config's gold no longer changes anything.
    const changes: string[] = [];
    policies.onPolicyChange((vm) => changes.push(vm));
    expect((await policies.bind("vm2", "silver", ada)).changed).toBe(true);
    policies.changed(["vm2"]);
    expect(changes).toEqual(["vm2"]);
    await policies.atHello("vm2", { policyName: "gold", intervalSeconds: 30, compressionLevel: 1, resync: "automatic", identity: "agent-a" });
    expect(policies.effectivePolicy("vm2").frequency).toEqual({ kind: "interval", seconds: 900 });
    expect(policies.wireFor("vm2")).toMatchObject({ name: "silver", version: 1, frequency: { $case: "intervalSeconds", value: 900 } });
    await expect(policies.bind("vm3", "bronze", ada)).rejects.toThrow(UnknownPolicyError);
    expect((await policies.bind("vm2", "silver", ada)).changed).toBe(false);
    await store.close();

    store = getSqliteEventStore({ path, create: false });
    policies = await SitePolicies.open(store, { defaultMaxPoints: 12 }, logger);
    expect(policies.effectivePolicyVersion("vm2")).toEqual({ name: "silver", version: 1 });
    expect(policies.book.boundTo("silver")).toEqual(["vm2"]);
    const bound = await store.readStream(bindingStream("vm2"));
    expect(bound.map((e) => [e.type, e.data.policyName, e.data.source, e.metadata.actor])).toEqual([
      [POLICY_BOUND, "gold", "agent-config", "agent-a"],
      [POLICY_BOUND, "silver", "site", "ada-admin"],
    ]);
    // Binding back to the built-in default.
    await policies.bind("vm2", "default", ada);
    expect(policies.effectivePolicyVersion("vm2")).toEqual({ name: "default", version: 0 });
    expect((await verifyLedger(store)).ok).toBe(true);
    await store.close();
  });
});
