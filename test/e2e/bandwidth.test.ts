/**
 * A policy's bandwidth limit with time windows on a real agent and site: inside the window the
 * cycle's wire bytes go no faster than the limit; a new policy version whose window does not cover
 * now lifts it at the next cycle, without a restart. Rates are taken from the ledger's own figures
 * (wire bytes and duration of each committed cycle); only lower bounds on time are asserted for the
 * limit, and the unlimited cycle need only beat the limit by half.
 */
import { randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { cliJson, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest, type TwoSites } from "../helpers/twoSites.js";

const KiB = 1024;
const MiB = 1024 * KiB;
const LIMIT = 256 * KiB;
const setup = twoSitesPerTest();

interface Committed {
  cycleSeq: number;
  wireBytes: number;
  durationMs: number;
  cutoffAt: string;
  committedAt: string;
}

async function commits(t: TwoSites): Promise<Committed[]> {
  const store = getSqliteEventStore({ path: join(t.siteB, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as Committed);
  } finally {
    await store.close();
  }
}

/** "HH:MM" of the agent's local clock (the same machine) `hours` from now. */
function localTime(hours: number): string {
  const d = new Date(Date.now() + hours * 3600_000);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

async function randomWrite(t: TwoSites, offsetMiB: number, sizeMiB: number): Promise<void> {
  const file = join(t.dir, `random-${offsetMiB}.bin`);
  writeFileSync(file, randomBytes(sizeMiB * MiB));
  await t.vm.guestWrite("vda", [`write -s ${file} ${offsetMiB}M ${sizeMiB}M`]);
}

describe("bandwidth limits with time windows", () => {
  it("paces the cycles inside the window, and a version whose window excludes now lifts the limit at the next cycle", async () => {
    const t = await setup("qr-bandwidth-", { diskBytes: 32 * MiB, intervalSeconds: 3600 });
    await t.startSite(t.siteB);
    const file = join(t.dir, "wan.yaml");
    // from == to: the whole day, every day.
    writeFileSync(file, `name: wan\nfrequency: 1h\nbandwidth:\n  - { limit: 256KiB/s, window: { from: "00:00", to: "00:00" } }\n`);
    await cliJson(["policy", "apply", file, "--dir", t.siteB]);
    // Incompressible, so the wire carries about what was written.
    await randomWrite(t, 0, 3);
    const agent = t.startAgent({ policy: "wan" });

    const initial = await waitFor("the initial replication", async () => (await commits(t))[0], 120_000);
    console.log("BW", JSON.stringify(initial));
    expect(initial.wireBytes).toBeGreaterThan(3 * MiB * 0.95);
    // At most one second's worth may go at once after an idle spell; the rest at the limit.
    const fastestAllowedMs = ((initial.wireBytes - LIMIT) / LIMIT) * 1000;
    expect(initial.durationMs).toBeGreaterThanOrEqual(fastestAllowedMs * 0.95);

    // The window of v2 starts two hours from now: outside it, no limit.
    writeFileSync(file, `name: wan\nfrequency: 1s\nbandwidth:\n  - { limit: 256KiB/s, window: { from: "${localTime(2)}", to: "${localTime(3)}" } }\n`);
    expect(await cliJson(["policy", "apply", file, "--dir", t.siteB])).toMatchObject({ version: 2, changed: true });
    await randomWrite(t, 8, 3);
    const unlimited = await waitFor(
      "a cycle carrying the second write",
      async () => (await commits(t)).find((c) => c.cycleSeq > initial.cycleSeq && c.wireBytes > 2 * MiB),
      60_000,
    );
    console.log("BW2", JSON.stringify(unlimited));
    const limitedMs = (unlimited.wireBytes / LIMIT) * 1000;
    // From cut-off to commit: everything the cycle took.
    expect(Date.parse(unlimited.committedAt) - Date.parse(unlimited.cutoffAt)).toBeLessThan(limitedMs / 2);
    // The same agent process throughout.
    expect(agent.child.exitCode).toBeNull();
  }, 240_000);
});
