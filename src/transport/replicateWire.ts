import { makeGenericClientConstructor, type CallOptions, type Client, type ClientDuplexStream, type Metadata } from "@grpc/grpc-js";
import { ReplicateRequest, ReplicationServiceService, type ReplicateResponse } from "../gen/qreplica/v1/replication.js";

/**
 * A ReplicateRequest that is already in its wire form. Extent chunks are built straight into
 * their final bytes (see `encodeExtentChunkRequest`): the generated encoder would copy a chunk's
 * payload three times (its writer, `finish()`, `Buffer.from`) and leave as many large buffers
 * for the garbage collector, per chunk, on the sender's busiest thread.
 */
export class EncodedReplicateRequest {
  constructor(readonly bytes: Buffer) {}
}

/** What a sender may write to a Replicate stream. */
export type OutgoingReplicateRequest = ReplicateRequest | EncodedReplicateRequest;

export function serializeReplicateRequest(message: OutgoingReplicateRequest): Buffer {
  return message instanceof EncodedReplicateRequest ? message.bytes : Buffer.from(ReplicateRequest.encode(message).finish());
}

/** The generated ReplicationService client, but its Replicate stream also takes pre-encoded requests. */
export interface ReplicationClient extends Client {
  replicate(options?: Partial<CallOptions>): ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>;
  replicate(metadata: Metadata, options?: Partial<CallOptions>): ClientDuplexStream<OutgoingReplicateRequest, ReplicateResponse>;
}

export const ReplicationClient = makeGenericClientConstructor(
  { replicate: { ...ReplicationServiceService.replicate, requestSerialize: serializeReplicateRequest } },
  "qreplica.v1.ReplicationService",
) as unknown as new (...args: ConstructorParameters<ReturnType<typeof makeGenericClientConstructor>>) => ReplicationClient;

// Protobuf wire format, for the few fields an extent chunk has. Field order and the omission of
// default values follow the generated encoder, so both produce the same bytes (a test holds them to it).

/** Bytes of a varint; `value` is a non-negative integer (a bigint when it may exceed 2^53). */
export function varintSize(value: number | bigint): number {
  let v = BigInt(value);
  let n = 1;
  while (v >= 0x80n) {
    v >>= 7n;
    n++;
  }
  return n;
}

export function writeVarint(buf: Buffer, pos: number, value: number | bigint): number {
  if (typeof value === "number" && value <= 0x7fff_ffff) {
    let v = value;
    while (v >= 0x80) {
      buf[pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    buf[pos++] = v;
    return pos;
  }
  let v = BigInt(value);
  while (v >= 0x80n) {
    buf[pos++] = Number(v & 0x7fn) | 0x80;
    v >>= 7n;
  }
  buf[pos++] = Number(v);
  return pos;
}

/** Tag byte of field `n` (< 16) with wire type `t`. */
export const tag = (n: number, t: 0 | 2): number => (n << 3) | t;

/** Size of a length-delimited field of `len` bytes, tag included. */
export const delimitedSize = (len: number): number => 1 + varintSize(len) + len;
