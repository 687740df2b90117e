import { cliJson } from "../helpers/processes.js";
import { ledgerEvents } from "../helpers/resyncChecks.js";
import type { Campaign } from "./campaignFixture.js";
import type { FaultKind } from "./faultKinds.js";
import type { InvariantChecker } from "./invariants.js";

/**
 * Kinds whose injection waits for a cycle to fail or be skipped: none runs while site B is failed
 * over (the primary's agent is refused as stale), so they are never scheduled in that moment.
 */
export const KINDS_NEEDING_CYCLES: readonly FaultKind[] = ["replica-storage-full", "primary-scratch-full"];

/** Ledger events that add a point: none may come from the old primary while B is failed over. */
const POINT_EVENTS = new Set(["CycleCommitted", "ResyncCompleted", "InitialReplicationCompleted"]);

/**
 * The "during-failover" moment: an unplanned failover at site B (without starting the VM: the
 * campaign's primary is a qemu-storage-daemon VM with no guest to boot) while the primary goes on
 * writing, so the fault strikes a failed-over relationship. Before the recovery check the operator
 * cancels it and starts the agent again (a stale refusal ends its replication of the VM; the
 * campaign's primary has no vCPUs to pause, so its writes go on). Checked: the failover outlived
 * the fault (a restarted site still holds it), no point came from the old primary while B was
 * failed over (one primary per generation), and the cancel was accepted. Returns the generation
 * replication goes on in (the cancel hands the failover's generation to the old primary).
 */
export async function failOverForTheFault(c: Campaign, checker: InvariantChecker, label: string): Promise<() => Promise<number>> {
  const fo = await cliJson<{ generation: number; recoveryPointId: string }>(["failover", "vm1", "--unplanned", "--no-start", "--dir", c.t.siteB]);
  return async () => {
    const state = await c.t.relationship();
    checker.check(
      state.failover !== undefined && state.generation === fo.generation,
      `${label}: the failover to ${fo.recoveryPointId} (generation ${fo.generation}) is not recorded after the fault: state ${state.state}, generation ${state.generation}`,
    );
    const events = await ledgerEvents(c.t.siteB);
    const from = events.map((e) => e.type).lastIndexOf("FailedOver");
    const added = events.slice(from + 1).filter((e) => POINT_EVENTS.has(e.type));
    checker.check(added.length === 0, `${label}: points added while site B was failed over (two primaries): ${added.map((e) => JSON.stringify(e.data)).join("; ")}`);
    const cancelled = await cliJson<{ state: string }>(["failover", "vm1", "cancel", "--dir", c.t.siteB]).catch((e: Error) => ({ state: `refused: ${e.message}` }));
    const after = await c.t.relationship();
    checker.check(after.failover === undefined, `${label}: the failover's cancel did not end it: ${cancelled.state}, relationship ${after.state}`);
    await c.agent.kill("SIGTERM");
    c.startAgent();
    return (await c.t.relationship()).generation;
  };
}
