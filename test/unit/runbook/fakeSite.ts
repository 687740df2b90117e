import type { LaunchedVm, RunbookTarget, VmReplicaStatus } from "../../../src/runbook/index.js";

interface FakeVm {
  state: string;
  generation: number;
  points: string[];
  tests: Set<string>;
  running: boolean;
}

/** A replica site in memory: the control-plane rules a runbook relies on, and a log of every call. */
export class FakeSite implements RunbookTarget {
  readonly calls: string[] = [];
  readonly vms = new Map<string, FakeVm>();
  /** Makes the next call of that operation for that VM fail, e.g. "failover:db1". */
  readonly failNext = new Set<string>();
  /** Planned/unplanned failover of that VM records the failover on the site, then fails (a launch error). */
  readonly failAfterFailover = new Set<string>();
  private nextTest = 1;

  constructor(
    vms: string[],
    private readonly serialLogOf: (vm: string) => string = (vm) => `/nonexistent/${vm}.serial.log`,
  ) {
    for (const vm of vms) this.vms.set(vm, { state: "replicating", generation: 1, points: ["rp-1", "rp-2", "rp-3"], tests: new Set(), running: false });
  }

  private vm(op: string, vm: string): FakeVm {
    this.calls.push(`${op} ${vm}`);
    if (this.failNext.delete(`${op}:${vm}`)) throw new Error(`${op} of ${vm} failed (injected)`);
    const v = this.vms.get(vm);
    if (!v) throw new Error(`no replication relationship for VM '${vm}' on site fake`);
    return v;
  }

  private launched(vm: string, name: string): LaunchedVm {
    return { name, serialLog: this.serialLogOf(vm), qmpSocket: `/run/${name}.qmp`, pid: 4242, timeToRunningMs: 25 };
  }

  async getStatus(vm: string): Promise<VmReplicaStatus> {
    const v = this.vm("getStatus", vm);
    return { vm, state: v.state, generation: v.generation, testFailoverActive: v.tests.size > 0 };
  }

  async listRecoveryPoints(vm: string) {
    return [...this.vm("listRecoveryPoints", vm).points];
  }

  async startTestFailover(vm: string, point: string | undefined) {
    const v = this.vm("startTestFailover", vm);
    const pointId = point ?? v.points.at(-1)!;
    if (!v.points.includes(pointId)) throw new Error(`VM ${vm} has no recovery point ${pointId}`);
    const testId = `t${this.nextTest++}`;
    v.tests.add(testId);
    return { testId, pointId, vm: this.launched(vm, `test-${vm}-${testId}`) };
  }

  async stopTestFailover(vm: string, testId: string) {
    const v = this.vm("stopTestFailover", vm);
    if (!v.tests.delete(testId)) throw new Error(`VM ${vm} has no test failover '${testId}'`);
    return [testId];
  }

  async failover(vm: string, kind: "planned" | "unplanned", point: string | undefined) {
    const v = this.vm(`failover`, vm);
    if (v.state !== "replicating") throw new Error(`failover: VM ${vm} is ${v.state}`);
    const pointId = point ?? v.points.at(-1)!;
    v.state = "failed-over-waiting-completion";
    v.generation++;
    if (this.failAfterFailover.delete(vm)) throw new Error(`VM ${vm}: QEMU did not start (injected)`);
    v.running = true;
    this.calls[this.calls.length - 1] += ` ${kind}`;
    return { pointId, generation: v.generation, vm: this.launched(vm, vm) };
  }

  async completeFailover(vm: string) {
    const v = this.vm("completeFailover", vm);
    v.state = "failed-over";
    return [];
  }

  async cancelFailover(vm: string) {
    const v = this.vm("cancelFailover", vm);
    if (v.state !== "failed-over-waiting-completion") throw new Error(`cancel: VM ${vm} is ${v.state}`);
    v.state = "replicating";
    v.running = false;
    return v.state;
  }

  async vmRunning(vm: string, _launched: LaunchedVm, test: boolean) {
    const v = this.vms.get(vm)!;
    return test ? v.tests.size > 0 : v.running;
  }

  close(): void {}
}
