import { pino, type Logger } from "pino";

export type { Logger };

/** Structured JSON logs on stderr, so stdout stays free for tables and `--json` output. */
export function createLogger(name: string, level: string = process.env.QREPLICA_LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level }, pino.destination(2));
}

/** A logger that drops everything: the default for library code when the caller gives none. */
export const silentLogger: Logger = pino({ level: "silent" });
