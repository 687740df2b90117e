/**
 * Argument checks run before a request is sent: a request the export cannot take is refused
 * locally with a message that names the limit, rather than by the server (or not at all).
 */
import { commandName } from "./constants.js";
import { NbdReadOnlyError, NbdRequestError, NbdUnsupportedError } from "./errors.js";
import type { NbdClient } from "./client.js";

/** What a negotiated export allows. */
export type NbdExportShape = Pick<
  NbdClient,
  "target" | "exportName" | "size" | "transmissionFlags" | "readOnly" | "blockSize" | "maxRequestBytes" | "metaContextIds" | "structuredReplies"
>;

export function metaContextId(ex: NbdExportShape, context: string): number {
  if (!ex.structuredReplies) {
    throw new NbdUnsupportedError(`NBD server at ${ex.target} refused structured replies, so BLOCK_STATUS ("${context}") is unavailable`);
  }
  const id = ex.metaContextIds.get(context);
  if (id === undefined) {
    const granted = [...ex.metaContextIds.keys()].map((c) => `"${c}"`).join(", ") || "none";
    throw new NbdUnsupportedError(
      `meta context "${context}" was not negotiated with export "${ex.exportName}" on ${ex.target} ` +
        `(granted: ${granted}); request it in metaContexts at connect, and check the export carries it (e.g. QSD --export ...,bitmap=NAME)`,
    );
  }
  return id;
}

export function checkRequestRange(ex: NbdExportShape, command: number, offset: number, length: number, max: number): void {
  const cmd = commandName(command);
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
    throw new NbdRequestError(`NBD ${cmd}: offset ${offset} and length ${length} must be non-negative integers`);
  }
  if (length > max) {
    throw new NbdRequestError(
      `NBD ${cmd} of ${length} bytes at offset ${offset} exceeds the ${max}-byte limit per request` +
        (max === ex.maxRequestBytes ? " (maxRequestBytes); split it into smaller requests" : ""),
    );
  }
  if (offset + length > ex.size) {
    throw new NbdRequestError(`NBD ${cmd} of ${length} bytes at offset ${offset} runs past the end of export "${ex.exportName}" (size ${ex.size})`);
  }
  const min = ex.blockSize.minimum;
  if (min > 1 && (offset % min !== 0 || (length % min !== 0 && offset + length !== ex.size))) {
    throw new NbdRequestError(`NBD ${cmd} of ${length} bytes at offset ${offset} is not aligned to the export's minimum block size ${min}`);
  }
}

export function checkWritable(ex: NbdExportShape, command: number): void {
  if (ex.readOnly) {
    throw new NbdReadOnlyError(`NBD export "${ex.exportName}" on ${ex.target} is read-only; refusing to send ${commandName(command)}`);
  }
}

export function checkFlag(ex: NbdExportShape, flag: number, what: string): void {
  if (!(ex.transmissionFlags & flag)) {
    throw new NbdUnsupportedError(`NBD export "${ex.exportName}" on ${ex.target} does not support ${what}`);
  }
}
