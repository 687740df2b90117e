import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { waitForCounter } from "../../../guest/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { count, offenders } from "../../helpers/dataAtRest.js";
import { runCli, waitFor } from "../../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../../helpers/twoSites.js";

const MiB = 1024 * 1024;
let env: TwoSites | undefined;
let cleanup: (() => void) | undefined;
let savedUmask: number | undefined;
afterEach(async () => {
  await env?.stopAll();
  if (savedUmask !== undefined) process.umask(savedUmask);
  if (!process.env.QR_KEEP) cleanup?.();
  env = undefined;
});

describe("data at rest under umask 022 (real processes)", { timeout: 300_000 }, () => {
  it("nothing the sites, the agent, 'site init' or 'pki' create grants any permission to group or others", async () => {
    // Every process below starts with umask 022, as from a usual login shell.
    savedUmask = process.umask(0o022);
    const tmp = makeTmpDir("qr-rest-");
    cleanup = tmp.cleanup;
    env = await setupTwoSites(tmp.path, { diskBytes: 8 * MiB, intervalSeconds: 1, counterGuest: true });
    const t = env;
    await t.startSite(t.siteA);
    await t.startSite(t.siteB);
    t.startAgent();
    await waitFor("three recovery points", async () => ((await t.relationship()).points.length >= 3 ? true : undefined), 180_000);

    const r = await runCli(["failover", "vm1", "--test", "--dir", t.siteB, "--json"]);
    expect(r.code, r.stderr + r.stdout).toBe(0);
    const test = JSON.parse(r.stdout) as { vm: { serialLog: string } };
    await waitForCounter(test.vm.serialLog, () => true, 120_000);
    const seq = (await t.relationship()).lastCycleSeq;
    await waitFor("two more cycles during the test", async () => ((await t.relationship()).lastCycleSeq >= seq + 2 ? true : undefined), 120_000);

    const roots = [t.siteA, t.siteB, join(t.dir, "agent-state"), t.caDir, join(t.dir, "agent-tls")];
    // While the test VM runs (its overlays, monitor socket and serial log exist), and after it stops.
    const during = roots.flatMap(offenders);
    expect(count(t.siteB)).toBeGreaterThan(20);
    const stop = await runCli(["test-failover", "stop", "vm1", "--dir", t.siteB]);
    expect(stop.code, stop.stderr).toBe(0);
    const after = roots.flatMap(offenders);
    if (during.length + after.length) console.error(`readable by group/others:\n${[...new Set([...during, ...after])].join("\n")}`);
    expect(during).toEqual([]);
    expect(after).toEqual([]);
  });
});
