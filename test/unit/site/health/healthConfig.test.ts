/** site.json `health` and `metricsListen`: optional, validated with the field named. */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { parseListen } from "../../../../src/common/metricsServer.js";
import { loadSiteConfig } from "../../../../src/site/siteConfig.js";

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

function site(extra: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), "qr-health-config-"));
  dirs.push(dir);
  const base = { siteId: "s", listen: "127.0.0.1:0", caFile: "ca", certFile: "c", keyFile: "k", ledgerPath: "l", storageRoot: "st" };
  writeFileSync(join(dir, "site.json"), JSON.stringify({ ...base, ...extra }));
  return dir;
}

describe("site config: health and metrics", () => {
  it("reads the health settings and the metrics address; absent, both are off/defaults", () => {
    expect(loadSiteConfig(site({ metricsListen: "127.0.0.1:9464", health: { evaluateEverySeconds: 1, rpoAlertSeconds: 600 } }))).toMatchObject({
      metricsListen: "127.0.0.1:9464",
      health: { evaluateEverySeconds: 1, rpoAlertSeconds: 600 },
    });
    const plain = loadSiteConfig(site({}));
    expect(plain.metricsListen).toBeUndefined();
    expect(plain.health).toBeUndefined();
  });

  it("refuses unknown keys and non-positive numbers, naming the field", () => {
    expect(() => loadSiteConfig(site({ health: { rpoAlert: 5 } }))).toThrow(
      /health\.rpoAlert: unknown field: did you mean 'rpoAlertSeconds'\?; the fields here are evaluateEverySeconds/,
    );
    expect(() => loadSiteConfig(site({ health: { windowSeconds: 0 } }))).toThrow(/health\.windowSeconds: 0 is not a number above 0; seconds/);
    expect(() => loadSiteConfig(site({ health: [] }))).toThrow(/health: is a list; expected a mapping/);
  });

  it("parses metrics listen addresses and refuses others with the fix", () => {
    expect(parseListen("127.0.0.1:9464")).toEqual({ host: "127.0.0.1", port: 9464 });
    expect(parseListen("[::1]:0")).toEqual({ host: "::1", port: 0 });
    expect(() => parseListen("9464")).toThrow(/give host:port, e.g. 127.0.0.1:9464/);
    expect(() => parseListen("h:70000")).toThrow(/port must be 0 to 65535/);
  });
});
