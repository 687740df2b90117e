/**
 * What a runbook run needs from the replica site: one method per control-plane operation, so the
 * executor is tested against a fake and runs for real over gRPC (controlTarget.ts).
 */

/** A VM the site launched for a test failover or a failover. */
export interface LaunchedVm {
  name: string;
  serialLog: string;
  qmpSocket: string;
  pid: number;
  timeToRunningMs: number;
}

export interface VmReplicaStatus {
  vm: string;
  /** The ledger's relationship state, e.g. "replicating", "failed-over-waiting-completion". */
  state: string;
  generation: number;
  testFailoverActive: boolean;
}

export interface RunbookTarget {
  /** Throws when the site has no replication relationship for the VM. */
  getStatus(vm: string): Promise<VmReplicaStatus>;
  /** Recovery point ids, oldest first. */
  listRecoveryPoints(vm: string): Promise<string[]>;
  startTestFailover(vm: string, point: string | undefined): Promise<{ testId: string; pointId: string; vm: LaunchedVm }>;
  stopTestFailover(vm: string, testId: string): Promise<string[]>;
  failover(vm: string, kind: "planned" | "unplanned", point: string | undefined): Promise<{ pointId: string; generation: number; vm?: LaunchedVm }>;
  completeFailover(vm: string): Promise<string[]>;
  /** Returns the relationship's state afterwards. */
  cancelFailover(vm: string): Promise<string>;
  /** Whether the VM a failover or test launched is still running. */
  vmRunning(vm: string, launched: LaunchedVm, test: boolean): Promise<boolean>;
  close(): void;
}

/** Checks made from where the runbook runs, not through the site. */
export interface Probes {
  /** Resolves with undefined when a connection was accepted, else with why not (e.g. ECONNREFUSED). */
  tcpConnect(host: string, port: number, timeoutMs: number): Promise<string | undefined>;
  /** The serial console output so far; undefined when the file cannot be read from here. */
  readSerialLog(path: string): Promise<string | undefined>;
}
