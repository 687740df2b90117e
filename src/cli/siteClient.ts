import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { ControlServiceClient } from "../gen/qreplica/v1/control.js";
import { addressFile, loadSiteConfig } from "../site/siteConfig.js";
import { channelCredentials, grpcChannelOptions, loadSiteCredentials } from "../transport/index.js";

export interface SiteTargetOptions {
  dir?: string;
  site?: string;
  ca?: string;
  cert?: string;
  key?: string;
}

/**
 * The control plane of a site, over mutual TLS. `--dir` takes the address and a certificate
 * from a site directory on this host; otherwise `--site host:port` with `--ca/--cert/--key`.
 */
export function controlClient(opts: SiteTargetOptions): ControlServiceClient {
  let address = opts.site;
  let files = opts.ca && opts.cert && opts.key ? { caFile: opts.ca, certFile: opts.cert, keyFile: opts.key } : undefined;
  if (opts.dir) {
    const config = loadSiteConfig(opts.dir);
    address ??= readAddress(opts.dir);
    files ??= { caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile };
  }
  if (!address || !files) throw new Error("which site? pass --dir SITE_DIR, or --site HOST:PORT with --ca, --cert and --key");
  return new ControlServiceClient(address, channelCredentials(loadSiteCredentials(files)), grpcChannelOptions);
}

export function readAddress(dir: string): string {
  try {
    return readFileSync(addressFile(dir), "utf8").trim();
  } catch {
    throw new Error(`site in ${dir} is not running (no ${addressFile(dir)}): start it with 'qreplica site serve --dir ${dir}'`);
  }
}

/** Unary call as a promise with a deadline, so a dead site fails fast. */
export function unary<Req, Res>(
  client: ControlServiceClient,
  method: (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
  timeoutMs = 15_000,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(new Error(err.details || err.message)) : resolve(res)));
  });
}
