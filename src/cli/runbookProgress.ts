import type { ControlServiceClient } from "../gen/qreplica/v1/control.js";
import type { PlanStep } from "../runbook/planner.js";
import { watchCycles } from "./cycleWatch.js";
import { progressReporter, type ProgressMode } from "./progress.js";

/**
 * A runbook's planned failover steps wait for the primary to stop its VM and ship a final cycle
 * (up to minutes): while one runs, the VM's cycles are shown on stderr as `qreplica failover
 * --planned` shows them. The other steps print their own start and end lines.
 */
export function runbookCycleProgress(client: ControlServiceClient, steps: readonly PlanStep[], mode: ProgressMode) {
  let active: { settle(): void; done: Promise<void> } | undefined;
  return {
    started(stepId: string): void {
      const step = steps.find((s) => s.id === stepId);
      if (step?.kind !== "failover" || step.mode !== "planned" || active) return;
      const reporter = progressReporter(mode);
      reporter.phase(step.vm, "asking the primary's agent to stop the VM and ship its final cycle");
      let settled = false;
      const done = watchCycles({ client, vm: step.vm, reporter, until: () => settled })
        .then(() => undefined)
        .catch(() => undefined)
        .finally(() => reporter.stop());
      active = { settle: () => (settled = true), done };
    },
    watching: (): boolean => active !== undefined,
    /** Ends the watch of the step in flight, after one last look (its final cycle's commit). */
    async ended(): Promise<void> {
      const a = active;
      active = undefined;
      if (!a) return;
      a.settle();
      await a.done;
    },
  };
}
