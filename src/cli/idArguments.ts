import type { Command } from "commander";
import { requireId, type IdKind } from "../model/index.js";
import { fail } from "./output.js";

/** Command arguments and options that carry ids, by name, across every `qreplica` command. */
const ARGUMENTS: Record<string, IdKind> = { vm: "VM id", runId: "runbook run id", group: "group id" };
const OPTIONS: Record<string, IdKind> = { point: "recovery point id", testId: "test id", resume: "runbook run id" };

/**
 * Checks every id a command was given before it runs, so `qreplica points ../x` says what an id
 * may be instead of reaching a site (which refuses it too: every edge validates).
 */
export function validateIdArguments(program: Command): void {
  program.hook("preAction", (_program, action) => {
    const json = action.opts<{ json?: boolean }>().json === true;
    try {
      action.registeredArguments.forEach((arg, i) => {
        const kind = ARGUMENTS[arg.name()];
        const value: unknown = action.processedArgs[i];
        if (kind && typeof value === "string") requireId(kind, value, `argument <${arg.name()}>`);
      });
      const opts = action.opts<Record<string, unknown>>();
      for (const [name, kind] of Object.entries(OPTIONS)) {
        const value = opts[name];
        if (typeof value === "string") requireId(kind, value, `option --${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
      }
    } catch (err) {
      fail(err, json);
    }
  });
}
