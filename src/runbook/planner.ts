import { isAbsolute, resolve } from "node:path";
import type { FailoverMode, Runbook, SiteRef } from "./model.js";

interface StepBase {
  /** Stable across runs of the same runbook, so a resumed run can match what already succeeded. */
  id: string;
  /** 1-based; 0 for the preflight check. */
  group: number;
  groupName?: string;
  description: string;
  /** Set when the step will not run, with the reason (it succeeded earlier in a resumed run). */
  skip?: string;
}

export interface PlannedFailover {
  vm: string;
  mode: FailoverMode;
  /** Undefined: the latest point when the step runs. */
  point?: string;
}

export type PlanStep = StepBase &
  (
    | { kind: "preflight"; vms: PlannedFailover[] }
    | ({ kind: "failover" } & PlannedFailover)
    | { kind: "wait"; wait: "vm-running"; vms: string[]; timeoutMs: number }
    | { kind: "wait"; wait: "tcp-port"; host: string; port: number; timeoutMs: number }
    | { kind: "wait"; wait: "serial-log"; vm: string; pattern: string; timeoutMs: number }
    | { kind: "confirm"; prompt: string }
    | { kind: "hook"; command: string; args: string[]; cwd: string; timeoutMs: number; vm?: string; groupVms: string[]; env: Record<string, string> }
  );

export interface Plan {
  runbook: string;
  /** A drill: every VM through StartTestFailover, nothing in production touched. */
  test: boolean;
  site: SiteRef;
  steps: PlanStep[];
  resumedRunId?: string;
}

export interface ResumeFrom {
  runId: string;
  /** Step ids that succeeded in the run being resumed: they are not run again. */
  succeeded: ReadonlySet<string>;
}

const seconds = (ms: number) => `${ms / 1000} s`;

/**
 * Turns a runbook into the exact, ordered steps `run` performs. Pure: `plan` prints this and
 * touches nothing, and `run` executes the same list, so what an operator reviewed is what runs.
 */
export function planRunbook(runbook: Runbook, opts: { test: boolean; resumeFrom?: ResumeFrom }): Plan {
  const steps: PlanStep[] = [];
  const skip = (id: string) => (opts.resumeFrom?.succeeded.has(id) ? { skip: `succeeded in run ${opts.resumeFrom.runId}` } : {});
  const toCheck: PlannedFailover[] = [];

  if (runbook.groups.some((g) => (g.consistencyGroups?.length ?? 0) > 0)) {
    throw new Error("the runbook names consistency groups: expand them first (expandConsistencyGroups), their members are known only to the site");
  }
  runbook.groups.forEach((g, gi) => {
    const group = gi + 1;
    const base = { group, ...(g.name ? { groupName: g.name } : {}) };
    const groupVms = g.vms.map((v) => v.vm);
    for (const v of g.vms) {
      const mode: FailoverMode = opts.test ? "test" : v.failover;
      const point = v.point === "latest" ? undefined : v.point;
      const id = `g${group}.vm.${v.vm}.failover`;
      const planned = { vm: v.vm, mode, ...(point ? { point } : {}) };
      const s = skip(id);
      if (!s.skip) toCheck.push(planned);
      const what = mode === "test" ? "test failover (isolated network)" : `${mode} failover`;
      steps.push({
        id,
        ...base,
        kind: "failover",
        ...planned,
        description:
          `${what} of ${v.vm} to ${point === "last-clean" ? "the last clean point (before the first suspect one)" : point ? `point ${point}` : "the latest point"}` +
          (v.groupPoint ? ` (consistency group ${v.groupPoint.group}, group point ${v.groupPoint.groupPointId})` : ""),
        ...s,
      });
    }
    g.steps.forEach((st, si) => {
      const prefix = `g${group}.step${si + 1}`;
      const label = st.name ? `${st.name}: ` : "";
      if ("wait" in st) {
        const id = `${prefix}.wait`;
        const timeoutMs = st.timeoutSeconds * 1000;
        if (st.wait === "vm-running") {
          const vms = st.vm ? [st.vm] : groupVms;
          steps.push({
            id,
            ...base,
            kind: "wait",
            wait: "vm-running",
            vms,
            timeoutMs,
            description: `${label}wait until ${vms.join(", ")} ${vms.length === 1 ? "is" : "are"} running (timeout ${seconds(timeoutMs)})`,
            ...skip(id),
          });
        } else if (st.wait === "tcp-port") {
          steps.push({
            id,
            ...base,
            kind: "wait",
            wait: "tcp-port",
            host: st.host,
            port: st.port,
            timeoutMs,
            description: `${label}wait until ${st.host}:${st.port} accepts TCP connections (timeout ${seconds(timeoutMs)})`,
            ...skip(id),
          });
        } else {
          steps.push({
            id,
            ...base,
            kind: "wait",
            wait: "serial-log",
            vm: st.vm,
            pattern: st.pattern,
            timeoutMs,
            description: `${label}wait for /${st.pattern}/ on ${st.vm}'s serial console (timeout ${seconds(timeoutMs)})`,
            ...skip(id),
          });
        }
      } else if ("confirm" in st) {
        const id = `${prefix}.confirm`;
        steps.push({ id, ...base, kind: "confirm", prompt: st.confirm, description: `${label}operator confirms: ${st.confirm}`, ...skip(id) });
      } else {
        const id = `${prefix}.hook`;
        // A relative path names a script next to the runbook; a bare name is looked up in PATH.
        const command = st.hook.includes("/") && !isAbsolute(st.hook) ? resolve(runbook.baseDir, st.hook) : st.hook;
        const timeoutMs = st.timeoutSeconds * 1000;
        const vm = st.vm ?? (groupVms.length === 1 ? groupVms[0] : undefined);
        steps.push({
          id,
          ...base,
          kind: "hook",
          command,
          args: st.args,
          cwd: runbook.baseDir,
          timeoutMs,
          ...(vm ? { vm } : {}),
          groupVms,
          env: st.env,
          description: `${label}run ${[st.hook, ...st.args].join(" ")}${vm ? ` for ${vm}` : ""} (timeout ${seconds(timeoutMs)})`,
          ...skip(id),
        });
      }
    });
  });

  // Checked before anything changes, so a typo in a VM id or point does not stop a run halfway.
  if (toCheck.length > 0) {
    steps.unshift({
      id: "preflight",
      group: 0,
      kind: "preflight",
      vms: toCheck,
      description: `check the site replicates ${toCheck.map((v) => v.vm).join(", ")} and has the recovery points`,
    });
  }
  return { runbook: runbook.name, test: opts.test, site: runbook.site, steps, ...(opts.resumeFrom ? { resumedRunId: opts.resumeFrom.runId } : {}) };
}
