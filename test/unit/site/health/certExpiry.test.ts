/** CERT_EXPIRING with an injected clock: the 30-day boundary, which certificate, and that it only ever warns. */
import { describe, expect, it } from "vitest";
import { CERT_EXPIRY_WARNING_MS, defaultThresholds, evaluateHealth, type HealthInput } from "../../../../src/site/health/rules.js";

const NOW = Date.parse("2026-12-05T04:00:00.000Z");
const DAY = 24 * 3600 * 1000;
const t = defaultThresholds({ frequencySeconds: 30 });

function input(certificates: HealthInput["certificates"]): HealthInput {
  const cutoffAt = NOW - 5_000;
  return {
    state: "replicating",
    consecutiveFailures: 0,
    lastErrorMessage: undefined,
    resyncReason: undefined,
    pauseReason: undefined,
    cycleSkipped: undefined,
    commits: [{ seq: 1, kind: "full", cutoffAt, committedAt: cutoffAt + 1000, dataBytes: 1, wireBytes: 1, durationMs: 1000 }],
    failures: [],
    newestCutoffAt: cutoffAt,
    agentConnected: true,
    lastActivityAt: NOW - 1000,
    watchingSince: NOW - 60_000,
    certificates,
  };
}

describe("CERT_EXPIRING", () => {
  it("a certificate valid for 30 days or more changes nothing", () => {
    const r = evaluateHealth(input([{ which: "site", commonName: "site-b", notAfter: NOW + CERT_EXPIRY_WARNING_MS, file: "/etc/qr/site-b.crt" }]), t, NOW);
    expect(r.level).toBe("normal");
    expect(r.reasons).toEqual([]);
  });

  it("this site's certificate expiring within 30 days: Warning naming the file, the CN, the date and the fix", () => {
    const notAfter = NOW + 30 * DAY - 1;
    const r = evaluateHealth(input([{ which: "site", commonName: "site-b", notAfter, file: "/etc/qr/site-b.crt" }]), t, NOW);
    expect(r.level).toBe("warning");
    expect(r.reasons).toHaveLength(1);
    const m = r.reasons[0]!;
    expect(m.code).toBe("CERT_EXPIRING");
    expect(m.message).toContain("this site's certificate /etc/qr/site-b.crt");
    expect(m.message).toContain("CN site-b");
    expect(m.message).toContain(new Date(notAfter).toISOString());
    expect(m.message).toContain("in 30 days");
    expect(m.message).toContain("qreplica pki request");
  });

  it("the agent's certificate and the site's both expiring: one reason each; an expired one says expired and is still only a Warning", () => {
    const r = evaluateHealth(
      input([
        { which: "site", commonName: "site-b", notAfter: NOW + 2 * DAY },
        { which: "agent", commonName: "agent-a", notAfter: NOW - 1000 },
      ]),
      t,
      NOW,
    );
    expect(r.level).toBe("warning");
    expect(r.reasons.map((x) => x.code)).toEqual(["CERT_EXPIRING", "CERT_EXPIRING"]);
    expect(r.reasons[1]!.message).toMatch(/^the primary agent's certificate \(CN agent-a\) expired at /);
    expect(r.reasons[1]!.message).toContain("--role agent");
  });

  it("comes after the replication reasons of the same level", () => {
    const i = { ...input([{ which: "agent" as const, commonName: "agent-a", notAfter: NOW + DAY }]), state: "paused" as const };
    expect(evaluateHealth(i, t, NOW).reasons.map((x) => x.code)).toEqual(["STATE_PAUSED", "CERT_EXPIRING"]);
  });
});
