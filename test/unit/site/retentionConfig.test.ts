import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { loadSiteConfig } from "../../../src/site/siteConfig.js";
import { siteDefaultRetention } from "../../../src/site/retention.js";
import { initialRelationshipState } from "../../../src/ledger/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const cleanups: Array<() => void> = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function siteDir(extra: Record<string, unknown>): string {
  const tmp = makeTmpDir("qr-site-cfg-");
  cleanups.push(tmp.cleanup);
  const base = {
    siteId: "site-b",
    listen: "127.0.0.1:0",
    caFile: "ca.crt",
    certFile: "s.crt",
    keyFile: "s.key",
    ledgerPath: "ledger.db",
    storageRoot: "storage",
    defaultMaxPoints: 7,
  };
  writeFileSync(join(tmp.path, "site.json"), JSON.stringify({ ...base, ...extra }));
  return tmp.path;
}

describe("the site's default retention", () => {
  it("without defaultRetention: the relationship's own point count, as before tiers", () => {
    const config = loadSiteConfig(siteDir({}));
    expect(config.defaultRetention).toBeUndefined();
    const state = { ...initialRelationshipState("vm1"), retention: { maxPoints: 5 } };
    expect(siteDefaultRetention(config)("vm1", state)).toEqual({ tiers: [], minPoints: 5 });
  });

  it("reads tiers from site.json and refuses bad ones, naming the field", () => {
    const tiers = [
      { everySeconds: 0, keepForSeconds: 7200 },
      { everySeconds: 3600, keepForSeconds: 172800 },
    ];
    const config = loadSiteConfig(siteDir({ defaultRetention: { tiers, minPoints: 3 } }));
    expect(siteDefaultRetention(config)("vm1", initialRelationshipState("vm1"))).toEqual({ tiers, minPoints: 3 });
    expect(() => loadSiteConfig(siteDir({ defaultRetention: { tiers: [{ everySeconds: 3600 }], minPoints: 3 } }))).toThrow(
      /defaultRetention\.tiers\[0\]\.keepForSeconds: is missing; how long the tier keeps its points/,
    );
    expect(() => loadSiteConfig(siteDir({ defaultRetention: { minPoints: 3 } }))).toThrow(/defaultRetention\.tiers: is missing/);
  });
});
