/**
 * A runbook: how one application is brought up on the replica site, as SRM and ASR recovery plans
 * do it. Groups run in order (boot order); inside a group the VMs fail over first, then the steps
 * run (waits, manual confirmations, hooks) before the next group starts.
 */

export type FailoverMode = "test" | "planned" | "unplanned";
export const FAILOVER_MODES: readonly FailoverMode[] = ["test", "planned", "unplanned"];

/**
 * The replica site whose control plane the runbook drives. Paths are absolute once loaded
 * (relative ones are resolved against the runbook file's directory).
 */
export type SiteRef =
  | { dir: string }
  /** A remote site, through its control plane with a personal certificate (role operator to run). */
  | { address: string; ca: string; cert: string; key: string };

export interface RunbookVm {
  vm: string;
  failover: FailoverMode;
  /** "latest", "last-clean" (the newest point before the first suspect one), or a recovery point id as `qreplica points` lists them. */
  point: string;
  /** Set when the entry came from a consistency group: the group and the group point it was pinned to. */
  groupPoint?: { group: string; groupPointId: string };
}

/**
 * A consistency group's members, failed over together to one group point (`qreplica group
 * points`). Expanded into one RunbookVm per member, each pinned to its point of that group point,
 * before planning (consistencyGroups.ts): the members are known only to the site.
 */
export interface RunbookConsistencyGroup {
  consistencyGroup: string;
  failover: "test" | "unplanned";
  /** "latest" (the newest complete group point when the run starts) or a group point id. */
  point: string;
}

export type WaitKind = "vm-running" | "tcp-port" | "serial-log";
export const WAIT_KINDS: readonly string[] = ["vm-running", "tcp-port", "serial-log", "guest-agent"];

export type RunbookWait =
  /** `vm` unset: every VM of the group. */
  | { wait: "vm-running"; vm?: string; timeoutSeconds: number; name?: string }
  | { wait: "tcp-port"; host: string; port: number; timeoutSeconds: number; name?: string }
  | { wait: "serial-log"; vm: string; pattern: string; timeoutSeconds: number; name?: string };

export interface RunbookConfirm {
  confirm: string;
  name?: string;
}

export interface RunbookHook {
  hook: string;
  args: string[];
  timeoutSeconds: number;
  /** The VM the hook is about (QREPLICA_VM); defaults to the group's VM when it has only one. */
  vm?: string;
  env: Record<string, string>;
  name?: string;
}

export type RunbookStep = RunbookWait | RunbookConfirm | RunbookHook;

export interface RunbookGroup {
  name?: string;
  vms: RunbookVm[];
  /** Consistency groups to fail over in this boot-order group (their members join `vms` once expanded). */
  consistencyGroups?: RunbookConsistencyGroup[];
  steps: RunbookStep[];
}

export interface Runbook {
  name: string;
  description?: string;
  site: SiteRef;
  groups: RunbookGroup[];
  /** Directory of the runbook file: hooks run there and relative paths resolve against it. */
  baseDir: string;
}

export const DEFAULT_WAIT_TIMEOUT_SECONDS = 300;
export const DEFAULT_HOOK_TIMEOUT_SECONDS = 300;
