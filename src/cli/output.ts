import { errorMessage } from "../common/errors.js";
import { exitCodeFor } from "./exitCodes.js";

/** Every command prints a table for people or, with --json, one JSON document for scripts. */
export function emit(json: boolean, value: unknown, human: () => string): void {
  if (json) console.log(JSON.stringify(value, (_k, v: unknown) => (typeof v === "bigint" ? Number(v) : v), 2));
  else console.log(human());
}

/** Errors end the command with a message that names the thing and the fix, and an exit status that says what happened (exitCodes.ts). */
export function fail(err: unknown, json: boolean): never {
  const code = (err as { code?: unknown }).code;
  if (json) console.log(JSON.stringify({ error: { code: typeof code === "string" ? code : "ERROR", message: errorMessage(err) } }));
  else console.error(`qreplica: ${errorMessage(err)}`);
  process.exit(exitCodeFor(err));
}
