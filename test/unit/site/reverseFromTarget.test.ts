/**
 * Reverse from the third site of an extended replication onto this site (A -> B -> C, the VM failed
 * over at C, reversed onto B): only C's own identity may become the VM's primary here, never an
 * identity the request merely pairs with C's site id.
 */
import { describe, expect, it } from "vitest";
import { getInMemoryEventStore, type RelationshipState } from "../../../src/ledger/index.js";
import { ExtensionLedger } from "../../../src/site/extension/extensionLedger.js";
import { prepareReverseFromTarget } from "../../../src/site/extension/reverseFromTarget.js";
import type { SiteContext } from "../../../src/site/siteContext.js";
import { enabled, fold, incremental, initialCommitted, initialStarted } from "../ledgerDomain/fixtures.js";

const VM = "web1";
const operator = { identity: "alice", role: "operator" as const };
const target = { targetAddress: "127.0.0.1:7443", targetSiteId: "site-c", intervalSeconds: 0 };

async function siteB() {
  const ledger = new ExtensionLedger(getInMemoryEventStore());
  await ledger.configure(VM, target, operator);
  await ledger.recordForwarded(VM, {
    pointId: "p2",
    cutoffAt: "2030-01-01T00:00:00.000Z",
    targetPointId: "c1",
    targetSeq: 1,
    targetGeneration: 1,
    kind: "full",
    dataBytes: 1,
    wireBytes: 1,
  });
  const rel = fold(VM, enabled, initialStarted, initialCommitted, incremental(2));
  const replaced: Array<{ primaryIdentity: string }> = [];
  const ctx = {
    siteId: "site-b",
    relationships: {
      load: async (): Promise<RelationshipState> => rel,
      replacePrimary: async (_caller: unknown, input: { primaryIdentity: string; generation: number }) => {
        replaced.push(input);
        return { ...rel, primaryIdentity: input.primaryIdentity, generation: input.generation, state: "resync-required" };
      },
    },
    extensions: { ledger, stop: async () => ledger.stop(VM, operator) },
    serializer: { run: <T>(_vm: string, fn: () => Promise<T>) => fn() },
  } as unknown as SiteContext;
  return { ctx, rel, replaced };
}

describe("prepareReverseFromTarget", () => {
  it("takes the forwarded-to site's own identity as the primary", async () => {
    const { ctx, rel, replaced } = await siteB();
    const state = await prepareReverseFromTarget(ctx, operator, { vmId: VM, generation: rel.generation + 1, primarySiteId: "site-c", primaryIdentity: "site-c", seeds: [] });
    expect(state?.primaryIdentity).toBe("site-c");
    expect(replaced).toHaveLength(1);
  });

  it("refuses another identity paired with the forwarded-to site's id, naming both, and records nothing", async () => {
    const { ctx, rel, replaced } = await siteB();
    await expect(
      prepareReverseFromTarget(ctx, operator, { vmId: VM, generation: rel.generation + 1, primarySiteId: "site-c", primaryIdentity: "some-agent", seeds: [] }),
    ).rejects.toMatchObject({ code: "REVERSE_FROM_TARGET_REFUSED", message: expect.stringMatching(/'some-agent'.*site-c/) });
    expect(replaced).toHaveLength(0);
  });
});
