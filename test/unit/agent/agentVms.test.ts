import { describe, expect, it } from "vitest";
import { createLogger } from "../../../src/common/logger.js";
import type { SiteCredentials } from "../../../src/transport/index.js";
import type { AgentConfig, AgentVmConfig } from "../../../replica-agent/daemon/agentConfig.js";
import { AgentVms } from "../../../replica-agent/daemon/agentVms.js";
import { CycleScheduler } from "../../../replica-agent/daemon/cycleScheduler.js";
import type { VmReplicator } from "../../../replica-agent/daemon/vmReplicator.js";

// When the agent process ends: once every VM's replication has ended by itself (a reverse agent
// whose old primary refused it exits 0 and is not restarted), or after stop(); a replicator that
// throws makes the exit non-zero. Reload is tested on real processes in test/e2e/agentSignals.

class FakeReplicator {
  stopped = false;
  private finish!: () => void;
  private fail!: (err: Error) => void;
  private readonly ran = new Promise<void>((resolve, reject) => {
    this.finish = resolve;
    this.fail = reject;
  });
  constructor(readonly vmId: string) {}
  run(): Promise<void> {
    return this.ran;
  }
  stop(): void {
    this.stopped = true;
    this.finish();
  }
  endByItself(): void {
    this.finish();
  }
  throwError(): void {
    this.fail(new Error("boom"));
  }
}

const vm = (id: string) => ({ id }) as AgentVmConfig;
const config = (ids: string[]) =>
  ({ siteId: "site-a", stateDir: "/nonexistent", tls: { caFile: "", certFile: "", keyFile: "" }, vms: ids.map(vm), maxCyclesInFlight: 4 }) as AgentConfig;
const tls = { ca: Buffer.from("ca"), cert: Buffer.from("c"), key: Buffer.from("k") } as SiteCredentials;

function fleet(ids: string[]) {
  const made = new Map<string, FakeReplicator>();
  const vms = new AgentVms(config(ids), tls, new CycleScheduler(4), createLogger("test", "silent"), (v) => {
    const r = new FakeReplicator(v.id);
    made.set(v.id, r);
    return r as unknown as VmReplicator;
  });
  vms.start();
  return { vms, made };
}

const settled = async (p: Promise<void>) => {
  let done = false;
  void p.then(() => (done = true));
  // Lets every promise callback already queued run.
  for (let i = 0; i < 10; i++) await Promise.resolve();
  return done;
};

describe("AgentVms", () => {
  it("is done only when every VM's replication has ended by itself, with no failure", async () => {
    const { vms, made } = fleet(["vm1", "vm2"]);
    expect(vms.vmIds).toEqual(["vm1", "vm2"]);
    made.get("vm1")!.endByItself();
    expect(await settled(vms.done)).toBe(false);
    expect(vms.vmIds).toEqual(["vm2"]);
    made.get("vm2")!.endByItself();
    expect(await settled(vms.done)).toBe(true);
    expect(vms.failures).toBe(0);
  });

  it("stop() stops every replicator and is then done", async () => {
    const { vms, made } = fleet(["vm1", "vm2"]);
    vms.stop();
    expect([...made.values()].every((r) => r.stopped)).toBe(true);
    expect(await settled(vms.done)).toBe(true);
  });

  it("counts a replicator that throws, so the agent exits non-zero", async () => {
    const { vms, made } = fleet(["vm1"]);
    made.get("vm1")!.throwError();
    expect(await settled(vms.done)).toBe(true);
    expect(vms.failures).toBe(1);
  });

  it("refuses a reload whose config does not load and keeps every VM", async () => {
    const { vms, made } = fleet(["vm1"]);
    const r = await vms.reload("/nonexistent/agent.yaml");
    expect(r.refused).toMatch(/agent\.yaml: file not found/);
    expect(vms.vmIds).toEqual(["vm1"]);
    expect(made.get("vm1")!.stopped).toBe(false);
  });
});
