/** A policy's `verification` (drill schedule and checks): parsed, defaulted, canonical, refused with the field and the fix. */
import { describe, expect, it } from "vitest";
import { parsePolicyYaml } from "../../../../src/policy/schema.js";
import { policyToYaml, samePolicy } from "../../../../src/policy/canonical.js";
import { InvalidPolicyError } from "../../../../src/policy/errors.js";

const problems = (yaml: string): string[] => {
  try {
    parsePolicyYaml(yaml);
  } catch (err) {
    if (err instanceof InvalidPolicyError) return err.problems.map((p) => `${p.path}: ${p.message}`);
    throw err;
  }
  throw new Error("the policy was accepted");
};

describe("policy verification", () => {
  it("parses every check, with window and timeout defaulted from every", () => {
    const p = parsePolicyYaml(`name: gold
verification:
  every: 6h
  checks: { serialPattern: "login:", tcpPort: 22, guestCommand: "systemctl is-system-running" }
`);
    expect(p.verification).toEqual({
      everySeconds: 6 * 3600,
      windowSeconds: 12 * 3600,
      timeoutSeconds: 300,
      checks: { serialPattern: "login:", guestAgent: true, tcpPort: 22, guestCommand: ["/bin/sh", "-c", "systemctl is-system-running"] },
    });
    expect(parsePolicyYaml("name: gold\n").verification).toBeUndefined();
  });

  it("writes its canonical form back and reads it as the same policy", () => {
    const p = parsePolicyYaml(
      `name: gold\nverification: { every: 60m, window: 1d, timeout: 90s, checks: { serialPattern: "^QREPLICA-COUNTER \\\\d+", guestCommand: [/usr/bin/true] } }\n`,
    );
    const yaml = policyToYaml(p);
    expect(yaml).toMatch(/every: 1h/);
    expect(yaml).toMatch(/timeout: 1m30s/);
    expect(p.verification?.checks.serialPattern).toBe("^QREPLICA-COUNTER \\d+");
    expect(samePolicy(parsePolicyYaml(yaml), p)).toBe(true);
  });

  it("refuses what cannot work, naming the field and the fix", () => {
    expect(problems("name: g\nverification: { every: 1h, checks: {} }\n")).toEqual([expect.stringMatching(/^verification\.checks: names no check; .*serialPattern/)]);
    expect(problems("name: g\nverification: { every: 30s, checks: { guestAgent: true } }\n")[0]).toMatch(/^verification\.every: "30s" is shorter than 1m/);
    expect(problems("name: g\nverification: { every: 1h, timeout: 2h, checks: { guestAgent: true } }\n")[0]).toMatch(
      /^verification\.timeout: must be shorter than 'every'.*retention merges/,
    );
    expect(problems("name: g\nverification: { every: 1h, window: 30m, checks: { guestAgent: true } }\n")[0]).toMatch(/^verification\.window: must be at least 'every'/);
    expect(problems('name: g\nverification: { every: 1h, checks: { serialPattern: "(" } }\n')[0]).toMatch(
      /^verification\.checks\.serialPattern: "\(" is not a valid regular expression/,
    );
    expect(problems("name: g\nverification: { every: 1h, checks: { tcpPort: 70000 } }\n")[0]).toMatch(/^verification\.checks\.tcpPort: 70000 is not a TCP port/);
    expect(problems("name: g\nverification: { every: 1h, checks: { guestCommand: [true] } }\n")[0]).toMatch(/^verification\.checks\.guestCommand: .*absolute path/);
    expect(problems("name: g\nverification: { every: 1h, checks: { guestAgent: false, guestCommand: [/bin/true] } }\n")[0]).toMatch(
      /^verification\.checks\.guestAgent: guestCommand runs through/,
    );
    expect(problems("name: g\nverification: { every: 1h, checks: { serialPatern: x } }\n")[0]).toMatch(
      /^verification\.checks\.serialPatern: unknown field: did you mean 'serialPattern'/,
    );
    expect(problems("name: g\nverification: { evry: 1h, checks: { serialPattern: x } }\n").join("\n")).toMatch(/did you mean 'every'/);
  });
});
