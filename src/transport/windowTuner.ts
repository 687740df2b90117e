import type { Http2Session } from "node:http2";

/**
 * Grows one HTTP/2 session's receive windows toward the link's bandwidth-delay product, as gRPC's
 * C core does with its BDP probe (grpc-js has none). While data arrives, it pings the peer every
 * `probeMs`; each answered ping gives the rate data arrived at during its round trip, and the
 * shortest round trip seen so far (the first ping goes out as the session opens, while the site
 * is idle) stands for the path's own delay (a busy event loop only ever
 * makes a ping look slower, so a minimum filters that out, as BBR's min-RTT does). Rate times
 * that delay is the bandwidth-delay product; when it reaches `limitedFraction` of the current
 * stream window, the window grows to `growth` times it, up to `maxStreamWindow`. On a LAN (a
 * round trip of well under a millisecond) that product is far below the starting window, so it
 * stays there even when the site is slow or busy, and a site slower than its agents holds no
 * more than before; a long fat pipe (50 ms at 1 Gbit/s: 6.25 MB) earns the larger window it
 * needs. Windows never shrink within a session.
 */
export interface WindowTuning {
  /** The stream window a session starts with (also advertised by the server's SETTINGS). */
  initialStreamWindow: number;
  maxStreamWindow: number;
  /** The connection window is kept at this many stream windows. */
  connectionFactor: number;
  probeMs: number;
  /** Fraction of the stream window the estimated bandwidth-delay product must reach to grow it. */
  limitedFraction: number;
  growth: number;
}

export interface WindowTuner {
  /** The stream window now advertised to the peer. */
  readonly streamWindow: number;
  stop(): void;
}

export function tuneSessionWindows(session: Http2Session, t: WindowTuning, onGrow?: (streamWindow: number) => void): WindowTuner {
  let streamWindow = t.initialStreamWindow;
  let pinging = false;
  let lastBytes = bytesRead(session);
  let minRttMs = Number.POSITIVE_INFINITY;
  let samples = 0;
  const grow = (sample: number): void => {
    const next = Math.min(t.maxStreamWindow, roundUpPow2(sample * t.growth));
    if (next <= streamWindow) return;
    try {
      // SETTINGS_INITIAL_WINDOW_SIZE reaches the session's open streams too (RFC 9113 6.9.2).
      session.settings({ initialWindowSize: next });
      session.setLocalWindowSize(next * t.connectionFactor);
      streamWindow = next;
      onGrow?.(next);
    } catch {
      // A session that is closing has nothing left to receive.
    }
  };
  const probe = (): void => {
    if (pinging || session.destroyed || session.closed || session.connecting) return;
    const before = bytesRead(session);
    // Idle since the last probe (control frames aside): nothing to learn, and no pings on a
    // quiet connection.
    if (before - lastBytes < QUIET_BYTES) return;
    lastBytes = before;
    pinging = true;
    const answered = (err: Error | null, durationMs: number): void => {
      pinging = false;
      if (err || session.destroyed || !(durationMs > 0)) return;
      const after = bytesRead(session);
      lastBytes = after;
      minRttMs = Math.min(minRttMs, durationMs);
      // One round trip alone may be one the event loop held up: trust the minimum of a few.
      if (++samples < MIN_SAMPLES) return;
      const bdp = ((after - before) / durationMs) * minRttMs;
      if (bdp >= streamWindow * t.limitedFraction) grow(bdp);
    };
    try {
      if (!session.ping(answered)) pinging = false;
    } catch {
      // Closing, or too many pings unanswered (a stalled link): a timer must never throw; the
      // window simply stays as it is.
      pinging = false;
    }
  };
  // One ping as the session opens, before any data: the site is idle then, so this round trip is
  // the path's own, and a LAN's sub-millisecond one keeps later (event-loop-delayed) pings from
  // passing for a long pipe.
  try {
    session.ping((err, durationMs) => {
      if (!err && durationMs > 0) {
        minRttMs = Math.min(minRttMs, durationMs);
        samples++;
      }
    });
  } catch {
    // Closing already: nothing to tune.
  }
  const timer = setInterval(probe, t.probeMs);
  timer.unref();
  const stop = (): void => clearInterval(timer);
  session.once("close", stop);
  return {
    get streamWindow() {
      return streamWindow;
    },
    stop,
  };
}

/** Bytes the session's socket has read (TLS records included: the link's view). */
function bytesRead(session: Http2Session): number {
  try {
    return session.socket?.bytesRead ?? 0;
  } catch {
    return 0;
  }
}

/** Round trips measured before the first decision. */
const MIN_SAMPLES = 3;

/** Less than this read between probes is control traffic (SETTINGS, pings, acks), not data. */
const QUIET_BYTES = 64 * 1024;

function roundUpPow2(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, n)));
}
