import { describe, expect, it } from "vitest";
import { SiteConfigError } from "../../../src/site/errors.js";
import { siteConfigFrom } from "../../../src/site/siteConfig.js";

const BASE = { siteId: "site-b", listen: "127.0.0.1:0", caFile: "tls/ca.crt", certFile: "tls/b.crt", keyFile: "tls/b.key", ledgerPath: "ledger.sqlite", storageRoot: "storage" };

function problems(extra: Record<string, unknown>) {
  try {
    siteConfigFrom({ ...BASE, ...extra }, "/srv/site-b");
  } catch (err) {
    expect(err).toBeInstanceOf(SiteConfigError);
    return (err as SiteConfigError).problems;
  }
  throw new Error("site.json was accepted");
}

describe("site.json validation", () => {
  it("a minimal site.json: defaults, paths relative to the site directory", () => {
    expect(siteConfigFrom(BASE, "/srv/site-b")).toMatchObject({ defaultMaxPoints: 24, caFile: "/srv/site-b/tls/ca.crt", storageRoot: "/srv/site-b/storage" });
  });

  it("compressionLevel 99 is refused with its path and the range", () => {
    expect(problems({ compressionLevel: 99 })).toEqual([
      { path: "compressionLevel", message: "99 is not a whole number from 1 to 19; a zstd level: 1 (fastest) to 19 (smallest)" },
    ]);
  });

  it("defaultMaxPoints that is not a count (null, as NaN was written) is refused, not read as 24", () => {
    expect(problems({ defaultMaxPoints: null })[0]).toMatchObject({ path: "defaultMaxPoints", message: expect.stringMatching(/^null is not a whole number from 1 to 100000/) });
    expect(problems({ defaultMaxPoints: 0 })[0]!.path).toBe("defaultMaxPoints");
  });

  it("unknown keys are refused at their path, with the near miss", () => {
    expect(problems({ storageroot: "x" })).toEqual([
      { path: "storageroot", message: expect.stringMatching(/^unknown field: did you mean 'storageRoot'\?; the fields here are siteId, listen/) },
    ]);
    expect(problems({ ledger: { kind: "postgres", url: "postgres://db/dr", scheme: "x" } })).toEqual([
      { path: "ledger.scheme", message: expect.stringMatching(/^unknown field: did you mean 'schema'\?/) },
    ]);
    expect(problems({ defaultRetention: { tiers: [{ everySeconds: 0, keepFor: 5 }], minPoints: 1 } }).map((p) => p.path)).toEqual([
      "defaultRetention.tiers[0].keepForSeconds",
      "defaultRetention.tiers[0].keepFor",
    ]);
  });

  it("a listen address without a port, a bad accelerator: refused with the fix", () => {
    const p = problems({ listen: "0.0.0.0", accel: "fast" });
    expect(p).toEqual([
      { path: "listen", message: expect.stringMatching(/is not host:port .*write e\.g\. 127\.0\.0\.1:7443/) },
      { path: "accel", message: expect.stringMatching(/^"fast" is not one of auto, kvm, tcg/) },
    ]);
  });

  it("launcher: qemu by default; libvirt with its URI; anything else refused with the fix", () => {
    expect(siteConfigFrom(BASE, "/srv/site-b").launcher).toBe("qemu");
    expect(siteConfigFrom({ ...BASE, launcher: "libvirt", libvirtUri: "qemu:///system" }, "/srv/site-b")).toMatchObject({ launcher: "libvirt", libvirtUri: "qemu:///system" });
    expect(problems({ launcher: "virsh", libvirtUri: "" })).toEqual([
      { path: "launcher", message: expect.stringMatching(/^"virsh" is not one of qemu, libvirt/) },
      { path: "libvirtUri", message: expect.stringMatching(/qemu:\/\/\/system/) },
    ]);
  });
});
