import { InvalidArgumentError, type Command } from "commander";
import * as grpc from "@grpc/grpc-js";
import { CycleKind } from "../../gen/qreplica/v1/common.js";
import type { ControlServiceClient, RelationshipStatus } from "../../gen/qreplica/v1/control.js";
import { ControlCallError, controlClient } from "../siteClient.js";
import { watchCycles } from "../cycleWatch.js";
import { relationshipJson, stateName } from "../jsonView.js";
import { emit, fail } from "../output.js";
import { PROGRESS_MODES, progressReporter, type ProgressMode } from "../progress.js";
import { withTarget, type Target } from "../target.js";

/** States a VM leaves only by an operator's command: waiting for "replicating" there would never end. */
const NEEDS_OPERATOR = new Set(["paused", "prepared-for-planned-failover", "failed-over-waiting-completion", "failed-over"]);

export function parseProgressMode(v: string): ProgressMode {
  if (!(PROGRESS_MODES as readonly string[]).includes(v)) throw new InvalidArgumentError(`'${v}' is not a progress mode: give one of ${PROGRESS_MODES.join(", ")}`);
  return v as ProgressMode;
}

/** --progress for every command that waits. */
export function withProgress(cmd: Command): Command {
  return cmd.option(
    "--progress <mode>",
    "progress on stderr: auto (a bar on a terminal, JSON lines otherwise), bar, lines (one JSON object per line), none",
    parseProgressMode,
    "auto" as ProgressMode,
  );
}

/**
 * Waits, showing each cycle's progress, until the VM replicates with a point and no initial
 * replication or resync in flight. Fails when the VM is in a state only an operator leaves.
 */
export async function waitUntilReplicating(client: ControlServiceClient, vm: string, mode: ProgressMode, timeoutSeconds?: number): Promise<RelationshipStatus | undefined> {
  const reporter = progressReporter(mode);
  try {
    return await watchCycles({
      client,
      vm,
      reporter,
      deadline: timeoutSeconds ? Date.now() + timeoutSeconds * 1000 : undefined,
      until: (rel) => {
        if (!rel) return false;
        const state = stateName(rel.state);
        if (NEEDS_OPERATOR.has(state))
          throw new ControlCallError(grpc.status.FAILED_PRECONDITION, `VM ${vm} is ${state}: it will not replicate again without an operator (see 'qreplica status ${vm}')`);
        const kind = rel.cycleInProgress?.kind;
        const catchingUp = kind === CycleKind.CYCLE_KIND_INITIAL || kind === CycleKind.CYCLE_KIND_RESYNC;
        return state === "replicating" && rel.lastRecoveryPoint !== undefined && !catchingUp;
      },
    });
  } finally {
    reporter.stop();
  }
}

export function registerWait(program: Command): void {
  withProgress(
    withTarget(
      program
        .command("wait <vm>")
        .description("wait for a VM's initial replication or resync to finish, showing its progress (bytes, rate, ETA) on stderr; ends once it replicates"),
      { dir: "the replica site's directory on this host", site: "the replica site's address" },
    ),
  )
    .option("--timeout <seconds>", "give up after N seconds (exit 1; the replication goes on)", (v) => {
      const n = Number(v);
      if (!/^\d+$/.test(v.trim()) || n < 1) throw new InvalidArgumentError(`'${v}' is not a whole number of seconds >= 1`);
      return n;
    })
    .addHelpText(
      "after",
      "\nProgress goes to stderr: a bar per cycle on a terminal, else one JSON object per line\n" +
        '({"event":"progress","vm","kind","cycleSequence","bytesDone","bytesTotal","bytesPerSecond","etaSeconds"}, then\n' +
        '"committed" with the total, "cycle-ended" for a cycle that made no point, "phase" for state changes).\n' +
        "stdout gets the VM's status at the end (with --json, one JSON document).",
    )
    .action(async (vm: string, o: Target & { progress: ProgressMode; timeout?: number }) => {
      try {
        const client = controlClient(o);
        const rel = await waitUntilReplicating(client, vm, o.progress, o.timeout);
        client.close();
        if (rel) emit(o.json, relationshipJson(rel), () => `VM ${vm}: replicating; newest point ${rel.lastRecoveryPoint?.recoveryPointId ?? "-"}`);
      } catch (err) {
        fail(err, o.json);
      }
    });
}
