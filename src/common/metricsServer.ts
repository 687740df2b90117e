/**
 * The Prometheus `/metrics` endpoint of a site or an agent: plain HTTP, GET /metrics only.
 *
 * Off unless configured, and meant for loopback: it has no TLS and no authentication, and what it
 * shows (VM ids, health, volumes) tells an attacker what to aim at. Scrape it through a local
 * Prometheus agent or a TLS-terminating proxy; a non-loopback address is logged as a warning.
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { QreplicaError } from "./errors.js";
import type { Logger } from "./logger.js";

export class MetricsListenError extends QreplicaError {
  readonly code = "METRICS_LISTEN_INVALID" as const;
  constructor(listen: string, detail: string, options?: { cause?: unknown }) {
    super(`metrics listen address '${listen}': ${detail}; give host:port, e.g. 127.0.0.1:9464`, options);
  }
}

export interface MetricsServer {
  /** host:port it listens on (the real port when 0 was asked). */
  readonly address: string;
  close(): Promise<void>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(listen.trim());
  if (!m) throw new MetricsListenError(listen, "not host:port");
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new MetricsListenError(listen, "the port must be 0 to 65535");
  return { host: m[1] ?? m[2] ?? "", port };
}

export async function startMetricsServer(listen: string, registry: Registry, logger: Logger): Promise<MetricsServer> {
  const { host, port } = parseListen(listen);
  if (!LOOPBACK.test(host)) logger.warn({ listen }, "metrics endpoint listens beyond loopback: it has no TLS or authentication, and names every VM");
  const server: Server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url ?? "").split("?")[0] !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("only GET /metrics is served here\n");
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { "content-type": registry.contentType }).end(text),
      (err: unknown) => {
        logger.error({ err }, "metrics collection failed");
        res.writeHead(500, { "content-type": "text/plain" }).end("metrics collection failed\n");
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) => reject(new MetricsListenError(listen, err.message, { cause: err })));
    server.listen(port, host || undefined, () => resolve());
  });
  const a = server.address() as AddressInfo;
  const address = a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  logger.info({ address }, "metrics endpoint serving /metrics");
  return {
    address,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
