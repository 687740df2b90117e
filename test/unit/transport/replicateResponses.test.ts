import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import type { ReplicateResponse } from "../../../src/gen/qreplica/v1/replication.js";
import { ReplicateResponses, type ReplicateClientStream } from "../../../src/transport/index.js";

// Only the stream's events matter to ReplicateResponses: a bare emitter stands in for the gRPC call.
function fakeStream(): EventEmitter & ReplicateClientStream {
  return new EventEmitter() as EventEmitter & ReplicateClientStream;
}

const ack = (seq: number): ReplicateResponse => ({ body: { $case: "cycleAck", value: { cycleSequence: BigInt(seq) } } }) as ReplicateResponse;

describe("ReplicateResponses", () => {
  it("a wait that timed out does not take the place of a newer wait", async () => {
    const stream = fakeStream();
    const responses = new ReplicateResponses(stream, "the replica site");
    const abandoned = responses.next(20).catch((e: Error) => e);
    const current = responses.next(5_000);
    // The abandoned wait is superseded at once, and its timer must not drop the current one.
    expect(String(await abandoned)).toMatch(/superseded/);
    await new Promise((r) => setTimeout(r, 40));
    stream.emit("data", ack(7));
    expect(await current).toEqual(ack(7));
  });

  it("a timed-out wait leaves later replies queued for the next wait", async () => {
    const stream = fakeStream();
    const responses = new ReplicateResponses(stream, "the replica site");
    await expect(responses.next(10)).rejects.toThrow(/no answer from the replica site within 10 ms/);
    stream.emit("data", ack(1));
    stream.emit("data", ack(2));
    expect(await responses.next(1_000)).toEqual(ack(1));
    expect(responses.poll()).toEqual(ack(2));
  });

  it("the stream's end fails the pending wait and every later one", async () => {
    const stream = fakeStream();
    const responses = new ReplicateResponses(stream, "the replica site");
    const pending = responses.next(5_000);
    stream.emit("end");
    await expect(pending).rejects.toThrow(/the replica site closed the Replicate stream/);
    await expect(responses.next(5_000)).rejects.toThrow(/closed/);
    await expect(responses.failed).rejects.toThrow(/closed/);
  });
});
