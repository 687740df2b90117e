/**
 * Issue 11, certificate lifecycle: the agent checks its replica site against the deployment CA's
 * revocation list (agent config `tls.crlFile`), read again when it changes. A site whose
 * certificate is revoked (its key stolen, say) is refused at the agent's next dial: the agent sends
 * it nothing, and says why.
 */
import { copyFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { cliJson, waitFor } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
const newTwoSites = twoSitesPerTest();

async function committed(siteDir: string): Promise<number> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).filter((e) => e.type === "CycleCommitted").length;
  } finally {
    await store.close();
  }
}

describe("the agent checks its replica site against the revocation list", () => {
  it("replicates while the site is not listed; once it is, the next dial is refused and nothing more is committed", { timeout: 180_000 }, async () => {
    const t = await newTwoSites("qr-agent-crl-", { diskBytes: 8 * MiB, intervalSeconds: 1 });
    const crlFile = join(t.dir, "agent-crl.pem");
    const empty = await cliJson<{ crlFile: string }>(["pki", "crl", "--ca-dir", t.caDir]);
    copyFileSync(empty.crlFile, crlFile);
    const site = await t.startSite(t.siteB);
    t.startAgent({ crlFile });
    const agentLog = () => readFileSync(join(t.dir, "agent.log"), "utf8");
    await waitFor("a point on B", async () => ((await committed(t.siteB)) >= 1 ? true : undefined), 90_000);

    const revoked = await cliJson<{ crlFile: string; revoked: Array<{ commonName: string }> }>([
      "pki",
      "revoke",
      "--ca-dir",
      t.caDir,
      "--cert",
      join(t.siteB, "tls", "site-b.crt"),
      "--reason",
      "keyCompromise",
    ]);
    expect(revoked.revoked.map((r) => r.commonName)).toEqual(["site-b"]);
    copyFileSync(revoked.crlFile, crlFile);
    await waitFor("the agent loads the new list", () => (/"revoked":1[,}].*revocation list loaded/.test(agentLog()) ? true : undefined), 30_000);
    // The next dial: site B restarted (the agent itself is not).
    await site.kill("SIGTERM");
    const before = await committed(t.siteB);
    await t.startSite(t.siteB);
    await waitFor("the agent refuses site B", () => (/certificate of 'site-b' \(serial [0-9A-F]+\) is revoked/.test(agentLog()) ? true : undefined), 60_000);
    expect(agentLog()).toMatch(/refusing to send it anything/);
    expect(await committed(t.siteB)).toBe(before);
  });
});
