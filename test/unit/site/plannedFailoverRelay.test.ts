/** The forwarding site's part of a planned failover at the third site: stop at the primary, forward the final point, then report. */
import { describe, expect, it } from "vitest";
import { silentLogger } from "../../../src/common/logger.js";
import { ChecksumAlgorithm } from "../../../src/gen/qreplica/v1/common.js";
import { relayPlannedFailover, type RelayContext } from "../../../src/site/extension/plannedFailoverRelay.js";
import type { OutgoingReplicateRequest } from "../../../src/transport/index.js";

const STOPPED_AT = new Date("2026-12-05T10:00:00.000Z");
const cycle = { seq: 7, generation: 1, maxChunk: 1024, checksum: ChecksumAlgorithm.CHECKSUM_ALGORITHM_SHA256 };

function relay(opts: { stop?: () => Promise<never>; finalCutoff?: string; unforwarded?: boolean; forwardFails?: boolean }) {
  const sent: OutgoingReplicateRequest[] = [];
  const forwarded: number[] = [];
  const failures: string[] = [];
  const recorded: Date[] = [];
  let cutoff = "2026-12-05T09:59:00.000Z";
  const ctx: RelayContext = {
    vmId: "vm1",
    targetSiteId: "site-c",
    stopPrimary: opts.stop ?? (async () => ({ stoppedAt: STOPPED_AT, finalCycleSeq: 40, method: "pause", disks: [{ diskId: "vda", imagePath: "/a/vda.qcow2" }] })),
    hasUnforwarded: async () => opts.unforwarded ?? true,
    forward: async (c) => {
      if (opts.forwardFails) throw new Error("site site-c: stream closed");
      forwarded.push(c.seq);
      cutoff = opts.finalCutoff ?? "2026-12-05T10:00:00.500Z";
    },
    lastForwardedCutoff: () => cutoff,
    send: async (m) => void sent.push(m),
    failedOver: async (stopped) => void recorded.push(stopped.stoppedAt),
    fail: async (m) => void failures.push(m),
    logger: silentLogger,
  };
  return { run: () => relayPlannedFailover(ctx, 10, cycle), sent, forwarded, failures, recorded };
}

describe("relayPlannedFailover", () => {
  it("forwards the final point, then reports the primary stopped with that cycle and no seeds", async () => {
    const r = relay({});
    await r.run();
    expect(r.forwarded).toEqual([7]);
    expect(r.failures).toEqual([]);
    expect(r.sent).toHaveLength(1);
    const message = r.sent[0]!;
    const body = "body" in message ? message.body : undefined;
    expect(body?.$case).toBe("primaryStopped");
    if (body?.$case !== "primaryStopped") return;
    expect(body.value).toMatchObject({ generation: 1n, finalCycleSequence: 7n, method: "pause", disks: [], stoppedAt: STOPPED_AT });
    expect(body.value.notStoppedReason).toBeUndefined();
    // Recorded here (the primary fenced) only once C was told.
    expect(r.recorded).toEqual([STOPPED_AT]);
  });

  it("fails, saying why, when the primary cannot be stopped or the point C has is older than the stop", async () => {
    const noAgent = relay({ stop: () => Promise.reject(new Error("the primary's agent for VM vm1 is not connected to site site-b")) });
    await noAgent.run();
    expect(noAgent.forwarded).toEqual([]);
    expect(noAgent.sent).toEqual([]);
    expect(noAgent.failures[0]).toMatch(/not connected to site site-b/);

    const stale = relay({ unforwarded: false });
    await stale.run();
    expect(stale.sent).toEqual([]);
    expect(stale.failures[0]).toMatch(/older than the stop/);
    expect([...noAgent.recorded, ...stale.recorded]).toEqual([]);
  });

  it("once the primary stopped, a failure says the VM is stopped there and how C fails over without losing writes", async () => {
    const stale = relay({ unforwarded: false });
    await stale.run();
    expect(stale.failures[0]).toMatch(/VM vm1 is stopped at its primary \(since 2026-12-05T10:00:00.000Z/);
    expect(stale.failures[0]).toMatch(/--unplanned/);

    const broken = relay({ forwardFails: true });
    await broken.run();
    expect(broken.sent).toEqual([]);
    expect(broken.failures).toHaveLength(1);
    expect(broken.failures[0]).toMatch(/VM vm1 is stopped at its primary .*could not be forwarded to site-c \(site site-c: stream closed\).*--unplanned/);
  });
});
