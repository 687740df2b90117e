/**
 * The window tuner's rule on a scripted session (fake timers, pings answered by the test): a long
 * fat pipe grows the window, a LAN never does, not even when a busy event loop makes one ping look
 * slow, and a ping that cannot be sent does not throw out of the timer.
 */
import type { Http2Session } from "node:http2";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { MAX_STREAM_WINDOW_BYTES, SITE_WINDOW_TUNING, STREAM_WINDOW_BYTES, tuneSessionWindows } from "../../../src/transport/index.js";

const MiB = 1024 * 1024;

/** A session whose socket has read `bytes` so far; each ping waits for the test to answer it. */
function scriptedSession() {
  const s = {
    bytes: 0,
    pending: undefined as ((err: Error | null, ms: number) => void) | undefined,
    settingsSent: [] as number[],
    throwOnPing: false,
    destroyed: false,
    closed: false,
    connecting: false,
    socket: {
      get bytesRead() {
        return s.bytes;
      },
    },
    ping(cb: (err: Error | null, ms: number) => void) {
      if (s.throwOnPing) throw new Error("ERR_HTTP2_PING_CANCEL");
      s.pending = cb;
      return true;
    },
    settings(v: { initialWindowSize: number }) {
      s.settingsSent.push(v.initialWindowSize);
    },
    setLocalWindowSize() {},
    once() {},
  };
  return s;
}

/** Answers the ping the tuner sends as the session opens, after `rttMs`. */
function opened(s: ReturnType<typeof scriptedSession>, rttMs: number): void {
  const answer = s.pending;
  s.pending = undefined;
  answer?.(null, rttMs);
}

/** One probe period in which `bytes` arrive, then the ping's answer after `rttMs` with `during` more. */
function round(s: ReturnType<typeof scriptedSession>, bytes: number, rttMs: number, during: number): void {
  s.bytes += bytes;
  vi.advanceTimersByTime(SITE_WINDOW_TUNING.probeMs);
  s.bytes += during;
  const answer = s.pending;
  s.pending = undefined;
  answer?.(null, rttMs);
}

beforeEach(() => vi.useFakeTimers());
afterEach(() => vi.useRealTimers());

describe("tuneSessionWindows", () => {
  it("50 ms at ~118 MiB/s: grows from 8 MiB to the 32 MiB maximum and tells the peer", () => {
    const s = scriptedSession();
    const tuner = tuneSessionWindows(s as unknown as Http2Session, SITE_WINDOW_TUNING);
    opened(s, 50);
    // 6 MB arrive per 50 ms round trip (queueing makes later ones look longer, never shorter).
    round(s, 30 * MiB, 50, 6 * MiB);
    expect(tuner.streamWindow).toBe(STREAM_WINDOW_BYTES);
    round(s, 30 * MiB, 70, 8 * MiB);
    expect(tuner.streamWindow).toBe(MAX_STREAM_WINDOW_BYTES);
    expect(s.settingsSent.at(-1)).toBe(MAX_STREAM_WINDOW_BYTES);
    tuner.stop();
  });

  it("a LAN keeps 8 MiB even at 300 MiB/s and with a ping held 40 ms by a busy event loop", () => {
    const s = scriptedSession();
    const tuner = tuneSessionWindows(s as unknown as Http2Session, SITE_WINDOW_TUNING);
    opened(s, 0.3);
    round(s, 75 * MiB, 0.3, 0.1 * MiB);
    round(s, 75 * MiB, 40, 12 * MiB);
    for (let i = 0; i < 10; i++) round(s, 75 * MiB, 0.5, 0.15 * MiB);
    expect(tuner.streamWindow).toBe(STREAM_WINDOW_BYTES);
    expect(s.settingsSent).toEqual([]);
    tuner.stop();
  });

  it("a LAN whose pings under load a busy event loop holds up keeps 8 MiB: the opening ping set the path's round trip", () => {
    const s = scriptedSession();
    const tuner = tuneSessionWindows(s as unknown as Http2Session, SITE_WINDOW_TUNING);
    opened(s, 0.2);
    for (let i = 0; i < 8; i++) round(s, 35 * MiB, 40, 5 * MiB);
    expect(tuner.streamWindow).toBe(STREAM_WINDOW_BYTES);
    tuner.stop();
  });

  it("pings an idle session only as it opens, and a ping that cannot be sent is not thrown out of the timer", () => {
    const s = scriptedSession();
    const tuner = tuneSessionWindows(s as unknown as Http2Session, SITE_WINDOW_TUNING);
    opened(s, 0.2);
    vi.advanceTimersByTime(SITE_WINDOW_TUNING.probeMs * 4);
    expect(s.pending).toBeUndefined();
    s.throwOnPing = true;
    s.bytes += 10 * MiB;
    expect(() => vi.advanceTimersByTime(SITE_WINDOW_TUNING.probeMs * 2)).not.toThrow();
    expect(tuner.streamWindow).toBe(STREAM_WINDOW_BYTES);
    tuner.stop();
  });
});
