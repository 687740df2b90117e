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
) as unknown as new (
  ...args: ConstructorParameters<ReturnType<typeof makeGenericClientConstructor>>
) => ReplicationClient;

// Protobuf wire format, for the few field kinds an extent chunk has. Fields are written in the
// order given, and a varint of 0 or empty bytes is left out as proto3 (and the generated encoder)
// does, so both produce the same bytes (a test holds them to it). Messages are always written.

export type WireField = { field: number; varint: number | bigint } | { field: number; bytes: Uint8Array } | { field: number; message: WireField[] };

const VARINT = 0;
const DELIMITED = 2;

function present(f: WireField): boolean {
  if ("varint" in f) return f.varint !== 0 && f.varint !== 0n;
  if ("bytes" in f) return f.bytes.length > 0;
  return true;
}

function bodySize(f: WireField): number {
  if ("varint" in f) return varintSize(f.varint);
  const n = "bytes" in f ? f.bytes.length : messageSize(f.message);
  return varintSize(n) + n;
}

/** Bytes `fields` take on the wire (field numbers below 16: one tag byte each). */
export function messageSize(fields: readonly WireField[]): number {
  let size = 0;
  for (const f of fields) if (present(f)) size += 1 + bodySize(f);
  return size;
}

/** Writes `fields` at `pos` of `out`; returns the position after them. */
export function writeMessage(out: Buffer, pos: number, fields: readonly WireField[]): number {
  for (const f of fields) {
    if (!present(f)) continue;
    if (f.field < 1 || f.field > 15) throw new RangeError(`field ${f.field} needs a multi-byte tag`);
    if ("varint" in f) {
      out[pos++] = (f.field << 3) | VARINT;
      pos = writeVarint(out, pos, f.varint);
    } else if ("bytes" in f) {
      out[pos++] = (f.field << 3) | DELIMITED;
      pos = writeVarint(out, pos, f.bytes.length);
      out.set(f.bytes, pos);
      pos += f.bytes.length;
    } else {
      out[pos++] = (f.field << 3) | DELIMITED;
      pos = writeVarint(out, pos, messageSize(f.message));
      pos = writeMessage(out, pos, f.message);
    }
  }
  return pos;
}

/** Bytes of a varint; `value` is a non-negative integer (a bigint when it may exceed 2^53). */
export function varintSize(value: number | bigint): number {
  if (typeof value === "number" && value <= Number.MAX_SAFE_INTEGER) {
    let n = 1;
    for (let v = value; v >= 0x80; v = Math.floor(v / 0x80)) n++;
    return n;
  }
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
