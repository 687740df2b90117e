/** The agent's side of a policy: the wire form read back, the frequency handed to the scheduler, when to freeze. */
import { describe, expect, it } from "vitest";
import { createLogger } from "../../../src/common/logger.js";
import { parsePolicyYaml } from "../../../src/policy/schema.js";
import { agentPolicyFromWire, effectivePolicyToWire } from "../../../src/policy/wire.js";
import { CyclePolicy } from "../../../replica-agent/daemon/cyclePolicy.js";
import type { AgentVmConfig } from "../../../replica-agent/daemon/agentConfig.js";

const vm = { id: "vm1", intervalSeconds: 3600, compressionLevel: 2, resync: "automatic", initialReplication: { kind: "now" } } as AgentVmConfig;

describe("the effective policy on the wire", () => {
  it("carries what the agent needs, and reads back into it", () => {
    const p = parsePolicyYaml(`
name: gold
frequency: continuous
minGap: 2s
applicationConsistent: { every: 4h, freezeTimeout: 5s }
compressionLevel: 7
bandwidth: [ { limit: 10MiB/s, window: { days: weekdays, from: "08:00", to: "18:00" } }, { limit: unlimited } ]
initialReplication: { at: "2026-12-05T02:00:00Z" }
resync: { mode: automatic, window: { from: "18:30", to: "06:00" } }
`);
    expect(agentPolicyFromWire(effectivePolicyToWire(p, 4))).toEqual({
      name: "gold",
      version: 4,
      frequency: { kind: "continuous", minGapMs: 2000 },
      compressionLevel: 7,
      applicationConsistent: { everySeconds: 14_400, freezeTimeoutMs: 5000 },
      bandwidth: [{ bytesPerSecond: 10 * 1024 * 1024, window: { days: [1, 2, 3, 4, 5], from: "08:00", to: "18:00" } }, { bytesPerSecond: 0 }],
      resync: { mode: "automatic", window: { from: "18:30", to: "06:00" } },
      initialReplicationAt: new Date("2026-12-05T02:00:00Z"),
    });
  });
});

describe("CyclePolicy", () => {
  it("uses the VM's config until the site sends a policy, and again when the site sends none", () => {
    const c = new CyclePolicy(vm, createLogger("test"));
    expect([c.label, c.current.frequency, c.current.compressionLevel]).toEqual(["config", { kind: "interval", ms: 3_600_000 }, 2]);
    c.use(effectivePolicyToWire(parsePolicyYaml("name: fast\nfrequency: 1s\ncompressionLevel: 9"), 2), "hello");
    expect([c.label, c.current.frequency, c.current.compressionLevel]).toEqual(["fast@2", { kind: "interval", ms: 1000 }, 9]);
    c.use(undefined, "push");
    expect(c.label).toBe("config");
  });

  it("hands a changed frequency to the scheduler, once, and an unchanged one not at all", () => {
    const told: unknown[] = [];
    const c = new CyclePolicy(vm, createLogger("test"), (f) => told.push(f));
    expect(c.frequency).toEqual({ kind: "interval", seconds: 3600 });
    c.use(undefined, "hello");
    expect(told).toEqual([]);
    c.use(effectivePolicyToWire(parsePolicyYaml("name: fast\nfrequency: 1s\ncompressionLevel: 9"), 1), "push");
    c.use(effectivePolicyToWire(parsePolicyYaml("name: fast\nfrequency: 1s\ncompressionLevel: 3"), 2), "push");
    c.use(effectivePolicyToWire(parsePolicyYaml("name: fast\nfrequency: continuous\nminGap: 2s"), 3), "push");
    expect(told).toEqual([
      { kind: "interval", seconds: 1 },
      { kind: "continuous", minGapSeconds: 2 },
    ]);
    expect(c.current.compressionLevel).toBe(1);
  });

  it("freezes the guest every N hours under a policy, every cut-off without one, never when the policy asks for none", () => {
    const c = new CyclePolicy(vm, createLogger("test"));
    // No site policy: as before policies, every cut-off (with a guest agent) is frozen.
    expect(c.quiesceNow(0)).toEqual({ freezeTimeoutMs: 5000 });
    c.use(effectivePolicyToWire(parsePolicyYaml("name: crash\nfrequency: 5m"), 1), "push");
    expect(c.quiesceNow(0)).toBeUndefined();
    c.use(effectivePolicyToWire(parsePolicyYaml("name: ac\nfrequency: 5m\napplicationConsistent: { every: 4h, freezeTimeout: 3s }"), 1), "push");
    const h = 3_600_000;
    expect(c.quiesceNow(10 * h)).toEqual({ freezeTimeoutMs: 3000 });
    // The guest did not answer: the point came crash-consistent, so the next cut-off tries again.
    c.noteAcknowledged("crash", 10 * h);
    expect(c.quiesceNow(10 * h + 300_000)).toEqual({ freezeTimeoutMs: 3000 });
    c.noteAcknowledged("application", 10 * h + 300_000);
    expect(c.quiesceNow(10 * h + 600_000)).toBeUndefined();
    expect(c.quiesceNow(14 * h + 299_999)).toBeUndefined();
    expect(c.quiesceNow(14 * h + 300_000)).toEqual({ freezeTimeoutMs: 3000 });
  });
});

describe("CyclePolicy: the initial replication's time", () => {
  const never = new Promise<never>(() => undefined);
  it("the VM config's time holds the initial copy until then, unless a site policy names its own", async () => {
    const at = new Date(Date.now() + 300);
    const c = new CyclePolicy({ ...vm, initialReplication: { kind: "at", at } }, createLogger("test"));
    expect(await c.untilInitialReplication([never], new AbortController().signal)).toBe(true);
    expect(Date.now()).toBeGreaterThanOrEqual(at.getTime());
    const held = new CyclePolicy({ ...vm, initialReplication: { kind: "at", at: new Date(Date.now() + 3_600_000) } }, createLogger("test"));
    held.use(effectivePolicyToWire(parsePolicyYaml('name: now\ninitialReplication: { at: "2020-01-01T00:00:00Z" }'), 1), "hello");
    expect(await held.untilInitialReplication([never], new AbortController().signal)).toBe(true);
  });

  it("a notice from the site ends the wait (false: the caller looks at it)", async () => {
    const c = new CyclePolicy({ ...vm, initialReplication: { kind: "at", at: new Date(Date.now() + 3_600_000) } }, createLogger("test"));
    expect(await c.untilInitialReplication([Promise.resolve()], new AbortController().signal)).toBe(false);
  });
});
