import type { Http2SecureServer, Http2Server, Http2Session } from "node:http2";
import type * as grpc from "@grpc/grpc-js";
import { QreplicaError } from "../common/errors.js";
import { tuneSessionWindows, type WindowTuning } from "./windowTuner.js";

/**
 * HTTP/2 receive windows for the Replicate stream. With HTTP/2's default of 64 KiB per stream, a
 * sender of 1-4 MiB chunks stops after every 64 KiB until the receiver's event loop has read the
 * data and sent a WINDOW_UPDATE: on a busy replica that ping-pong, not the link, sets the rate.
 * A site starts every connection at 8 MiB per stream (16 MiB per connection): enough on a LAN,
 * and what a site slower than its agents holds per stream. On a long fat pipe the window must
 * exceed the bandwidth-delay product by a margin (nghttp2 returns credit only once half the
 * window is consumed, and only as fast as the site's event loop reads): 50 ms at 1 Gbit/s is
 * 6.25 MB, and 8 MiB held a gRPC stream there to about 55-65% of what 32 MiB reached (bench
 * `wan`, README). So each connection's windows grow, up to 32 MiB per stream (64 MiB per
 * connection), when a BDP probe finds the link's bandwidth-delay product near the window
 * (windowTuner.ts). The sender holds nothing more for it: its unsent chunks are bounded by
 * `maxUnwritten` in replicateResponses.ts.
 */
export const STREAM_WINDOW_BYTES = 8 * 1024 * 1024;
export const CONNECTION_WINDOW_BYTES = 2 * STREAM_WINDOW_BYTES;
export const MAX_STREAM_WINDOW_BYTES = 32 * 1024 * 1024;

export const SITE_WINDOW_TUNING: WindowTuning = Object.freeze({
  initialStreamWindow: STREAM_WINDOW_BYTES,
  maxStreamWindow: MAX_STREAM_WINDOW_BYTES,
  connectionFactor: CONNECTION_WINDOW_BYTES / STREAM_WINDOW_BYTES,
  // A few probes per second: one ping frame each, only while data flows.
  probeMs: 250,
  // A product of 2 MiB (50 ms at 40 MiB/s) already calls for more than 8 MiB: credit returns at
  // half a window, and the site's event loop delays it further.
  limitedFraction: 0.25,
  // 50 ms at 1 Gbit/s (6.25 MB) goes from 8 straight to the 32 MiB that measured best there.
  growth: 4,
});

/**
 * What a dialling agent or site lets the answering site send ahead: acks, resync hashes (32 bytes
 * per 64 KiB chunk, 2 MiB for a 4 GiB disk), notices. Small next to the chunks going the other
 * way, so it stays at 8 MiB and the agent's memory does not grow with the site's windows.
 */
export const CLIENT_RECEIVE_WINDOW_BYTES = 8 * 1024 * 1024;

/** grpc-js could not be given the window sizes (its internals changed); replication would crawl. */
export class FlowControlSetupError extends QreplicaError {
  readonly code = "FLOW_CONTROL_SETUP_FAILED" as const;
}

type AnyHttp2Server = Http2Server | Http2SecureServer;

/**
 * Replicate requests a site decodes ahead of its handler. grpc-js queues 16 (its streams' default
 * object high-water mark): 16 chunks of up to 2 MiB each beyond those the handler is writing,
 * which measured as a good part of the site's peak RSS in a large cycle, while the HTTP/2
 * window (STREAM_WINDOW_BYTES) behind them keeps the link busy on its own.
 */
export const REPLICATE_READ_AHEAD_MESSAGES = 2;

/**
 * Lowers how many messages a grpc-js server stream reads ahead of its consumer. grpc-js has no
 * option for it (its streams are built with Node's default), so this sets the stream's
 * high-water mark, which Node reads afresh on every read; throws `FlowControlSetupError` when
 * the stream does not have one where Node keeps it, so a change fails loudly in tests.
 */
export function limitReadAhead(stream: object, messages: number): void {
  const state = (stream as { _readableState?: { highWaterMark?: unknown; objectMode?: unknown } })._readableState;
  if (!state || typeof state.highWaterMark !== "number" || state.objectMode !== true) {
    throw new FlowControlSetupError("cannot limit a stream's read-ahead: this Node.js keeps no object-mode `_readableState.highWaterMark`; update src/transport/flowControl.ts");
  }
  state.highWaterMark = messages;
}

/**
 * Raises the receive windows of every HTTP/2 server `server` has bound so far. grpc-js has a
 * channel option for this on clients (`grpc-node.flow_control_window`) but none on servers
 * (grpc/grpc-node#3058), so this reaches its bound http2 servers, applies the per-stream window
 * through SETTINGS (`updateSettings`, which also reaches sessions already open), widens each
 * connection's window as it opens and lets it grow on a long fat pipe (windowTuner.ts). Call it after every `bindAsync`. Throws
 * `FlowControlSetupError` when the servers cannot be found, so an upgrade of grpc-js that moves
 * them fails loudly in tests instead of silently slowing replication down.
 */
export function widenServerFlowControl(server: grpc.Server, opts: { onWindowGrown?: (streamWindow: number, peer: string) => void } = {}): void {
  const bound = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(bound instanceof Map)) {
    throw new FlowControlSetupError(
      "cannot set HTTP/2 flow-control windows: this grpc-js version does not keep its servers in `http2Servers`; update src/transport/flowControl.ts",
    );
  }
  for (const http2Server of bound.keys() as IterableIterator<AnyHttp2Server>) {
    if (widened.has(http2Server)) continue;
    widened.add(http2Server);
    http2Server.updateSettings({ initialWindowSize: STREAM_WINDOW_BYTES });
    http2Server.on("session", (session: Http2Session) => widenSession(session, opts.onWindowGrown));
  }
}

const widened = new WeakSet<AnyHttp2Server>();

function widenSession(session: Http2Session, onGrown?: (streamWindow: number, peer: string) => void): void {
  // Before the peer's SETTINGS arrive the session may not accept a window change yet.
  const apply = () => {
    try {
      session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
    } catch {
      // A session that is already closing has nothing left to receive.
      return;
    }
    const peer = `${session.socket?.remoteAddress ?? "?"}:${session.socket?.remotePort ?? "?"}`;
    tuneSessionWindows(session, SITE_WINDOW_TUNING, onGrown && ((w) => onGrown(w, peer)));
  };
  if (session.connecting) session.once("connect", apply);
  else apply();
}
