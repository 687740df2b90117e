import type * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../common/errors.js";

/** Marks a request whose bytes did not decode (see below); its value is the decoder's message. */
export const UNDECODABLE = Symbol("undecodable request");

/**
 * The service with request decoding that never throws: grpc-js answers a throw with a bare
 * "INTERNAL: Error deserializing request", before the caller's role is even checked. Instead the
 * guard sees a marked request, checks the role as for any call, and refuses it with
 * INVALID_ARGUMENT naming the call (controlPlane/guard.ts); a Replicate stream ends the same way
 * (dataPlane/replicateSession.ts).
 */
export function tolerantDecoding<S extends grpc.ServiceDefinition>(service: S): S {
  const entries = Object.entries(service).map(([name, def]) => [
    name,
    {
      ...def,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return def.requestDeserialize(bytes) as unknown;
        } catch (err) {
          return { [UNDECODABLE]: errorMessage(err) };
        }
      },
    },
  ]);
  return Object.fromEntries(entries) as S;
}
