import { QreplicaError } from "../common/errors.js";

/** One thing wrong in a runbook file: where (`groups[1].steps[0].port`), what, and how to fix it. */
export interface RunbookProblem {
  path: string;
  message: string;
  fix?: string;
  /** 1-based line in the YAML file, when the problem could be located there. */
  line?: number;
}

export function formatProblem(p: RunbookProblem): string {
  const where = p.line === undefined ? p.path : `${p.path} (line ${p.line})`;
  return `${where}: ${p.message}${p.fix ? ` (${p.fix})` : ""}`;
}

/** The runbook does not validate; `problems` lists every problem, not just the first. */
export class RunbookInvalidError extends QreplicaError {
  readonly code = "RUNBOOK_INVALID" as const;
  constructor(
    readonly file: string,
    readonly problems: RunbookProblem[],
  ) {
    super(`${file}: ${problems.length} problem${problems.length === 1 ? "" : "s"}:\n${problems.map((p) => `  ${formatProblem(p)}`).join("\n")}`);
  }
}

export class RunbookUnreadableError extends QreplicaError {
  readonly code = "RUNBOOK_UNREADABLE" as const;
}

/** No run with that id in the ledger that was opened. */
export class RunbookRunNotFoundError extends QreplicaError {
  readonly code = "RUNBOOK_RUN_NOT_FOUND" as const;
  constructor(
    readonly runId: string,
    ledgerPath: string,
  ) {
    super(`no runbook run '${runId}' in the ledger ${ledgerPath}: check the run id ('qreplica runbook run' prints it) and that --dir names the replica site the run used`);
  }
}

/** `--resume` asked for something the recorded run cannot do (other runbook, drill vs real, rolled back). */
export class RunbookResumeRefusedError extends QreplicaError {
  readonly code = "RUNBOOK_RESUME_REFUSED" as const;
}
