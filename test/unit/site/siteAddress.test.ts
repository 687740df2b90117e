import { describe, expect, it } from "vitest";
import { siteSans } from "../../../src/cli/commands/site.js";
import { hostPort, isWildcardHost, listenHost } from "../../../src/site/siteConfig.js";

describe("site addresses and certificate names", () => {
  it("reads the host of a listen address, IPv6 brackets removed", () => {
    expect(listenHost("0.0.0.0:7443")).toBe("0.0.0.0");
    expect(listenHost("[::]:0")).toBe("::");
    expect(listenHost("site-a.example:7443")).toBe("site-a.example");
    expect(listenHost("[fd00::1]:7443")).toBe("fd00::1");
  });

  it("knows the wildcards nobody can dial", () => {
    for (const h of ["0.0.0.0", "::", "[::]", ""]) expect(isWildcardHost(h), h).toBe(true);
    for (const h of ["127.0.0.1", "127.0.0.2", "::1", "site-a.example"]) expect(isWildcardHost(h), h).toBe(false);
  });

  it("brackets IPv6 literals in host:port", () => {
    expect(hostPort("127.0.0.2", 7443)).toBe("127.0.0.2:7443");
    expect(hostPort("fd00::1", 7443)).toBe("[fd00::1]:7443");
    expect(hostPort("site-a.example", 1)).toBe("site-a.example:1");
  });

  it("puts the --san names first, then a concrete listen host, then localhost and 127.0.0.1, once each", () => {
    expect(siteSans("0.0.0.0:7443", ["site-a.example", "10.0.0.5"])).toEqual(["site-a.example", "10.0.0.5", "localhost", "127.0.0.1"]);
    expect(siteSans("127.0.0.3:0", [])).toEqual(["127.0.0.3", "localhost", "127.0.0.1"]);
    expect(siteSans("127.0.0.1:7443", ["127.0.0.1"])).toEqual(["127.0.0.1", "localhost"]);
    expect(siteSans("[::]:7443", [])).toEqual(["localhost", "127.0.0.1"]);
  });
});
