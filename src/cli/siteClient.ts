import { existsSync, readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { ControlServiceClient } from "../gen/qreplica/v1/control.js";
import { PolicyServiceClient } from "../gen/qreplica/v1/policy.js";
import { MonitoringServiceClient } from "../gen/qreplica/v1/monitoring.js";
import { addressFile, adminCredentialFiles, loadSiteConfig } from "../site/siteConfig.js";
import type { ChannelCredentials, ChannelOptions } from "@grpc/grpc-js";
import { FixedRevocationList, loadSiteCredentials, siteDial, type SiteCredentials } from "../transport/index.js";

export interface SiteTargetOptions {
  dir?: string;
  site?: string;
  ca?: string;
  cert?: string;
  key?: string;
  /** The deployment CA's revocation list: a site whose certificate it lists is refused. */
  crl?: string;
}

/** An error from a control call: the server's message, and its status as `code` for --json output. */
export class ControlCallError extends Error {
  readonly code: string;
  constructor(
    readonly grpcCode: grpc.status,
    message: string,
  ) {
    super(message);
    this.code = grpc.status[grpcCode] ?? "UNKNOWN";
  }
}

/**
 * Which identity the CLI presents. With `--dir` on the site's host: the site's local admin
 * certificate (`tls/admin.crt`, role admin, made by `site init`), never the site's own agent
 * certificate, which the control plane refuses. `--cert/--key` override it with a personal
 * identity (a viewer's or an operator's, from `qreplica pki issue --role`).
 */
export function controlCredentialFiles(opts: SiteTargetOptions): { caFile: string; certFile: string; keyFile: string } | undefined {
  const config = opts.dir ? loadSiteConfig(opts.dir) : undefined;
  const caFile = opts.ca ?? config?.caFile;
  if (opts.cert || opts.key) {
    if (!opts.cert || !opts.key || !caFile) throw new Error("--cert and --key go together, with --ca (or --dir for the site's CA certificate)");
    return { caFile, certFile: opts.cert, keyFile: opts.key };
  }
  if (!opts.dir || !config) return undefined;
  const admin = adminCredentialFiles(opts.dir);
  if (!existsSync(admin.certFile) || !existsSync(admin.keyFile)) {
    throw new Error(
      `site ${opts.dir} has no local admin certificate (${admin.certFile}); sites made before roles existed lack it: ` +
        `issue one with 'qreplica pki issue --ca-dir CA_DIR --name ${config.siteId}-admin --role admin --out-dir DIR' and pass --cert DIR/${config.siteId}-admin.crt --key DIR/${config.siteId}-admin.key`,
    );
  }
  return { caFile: config.caFile, ...admin };
}

/**
 * The control plane of a site, over mutual TLS. `--dir` takes the address and the local admin
 * certificate from a site directory on this host; otherwise `--site host:port` with `--ca/--cert/--key`.
 */
export function controlClient(opts: SiteTargetOptions): ControlServiceClient {
  const dial = dialSite(opts);
  return new ControlServiceClient(dial.address, dial.credentials, dial.options);
}

/** The site's PolicyService, on the same endpoint and with the same identity as controlClient. */
export function policyClient(opts: SiteTargetOptions): PolicyServiceClient {
  const dial = dialSite(opts);
  return new PolicyServiceClient(dial.address, dial.credentials, dial.options);
}

/** The site's MonitoringService (Measure), on the same endpoint and identity as the control plane. */
export function monitoringClient(opts: SiteTargetOptions): MonitoringServiceClient {
  const dial = dialSite(opts);
  return new MonitoringServiceClient(dial.address, dial.credentials, dial.options);
}

function dialSite(opts: SiteTargetOptions): { address: string; credentials: ChannelCredentials; options: ChannelOptions } {
  // The site directory is checked first: "not a site" says more than "not running".
  const files = controlCredentialFiles(opts);
  const address = opts.site ?? (opts.dir ? readAddress(opts.dir) : undefined);
  if (!address || !files) throw new Error("which site? pass --dir SITE_DIR, or --site HOST:PORT with --ca, --cert and --key");
  return { address, ...siteDial(address, cliCredentials(opts, files)) };
}

/**
 * The CLI's identity, and the revocation list it checks the site against: `--crl`, or with
 * `--dir` the site's own `crlFile` (a CLI on the site's host trusts what the site trusts).
 */
function cliCredentials(opts: SiteTargetOptions, files: { caFile: string; certFile: string; keyFile: string }): SiteCredentials {
  const creds = loadSiteCredentials(files);
  const crlFile = opts.crl ?? (opts.dir ? loadSiteConfig(opts.dir).crlFile : undefined);
  return crlFile ? { ...creds, revocations: FixedRevocationList.load(crlFile, files.caFile) } : creds;
}

export function readAddress(dir: string): string {
  try {
    return readFileSync(addressFile(dir), "utf8").trim();
  } catch {
    throw new Error(`site in ${dir} is not running (no ${addressFile(dir)}): start it with 'qreplica site serve --dir ${dir}'`);
  }
}

/** Unary call as a promise with a deadline, so a dead site fails fast. */
/** The site's own words, or for a site that did not answer at all, what to check. */
function describeCallError(err: grpc.ServiceError): string {
  const details = err.details || err.message;
  // Refused by this side's own checks (the site's name, pin or revocation): the site did answer.
  if (/refusing to send it anything/.test(details)) return details.replace(/^.*?Last error: (Error: )?/, "");
  if (err.code === grpc.status.UNAVAILABLE)
    return `no site answered (${details.replace(/\s*Resolution note:\s*$/, "")}): is it running (qreplica site serve), and is the address right?`;
  if (err.code === grpc.status.DEADLINE_EXCEEDED) return `the site did not answer in time (${details}): is it overloaded or stopped (SIGSTOP)?`;
  return details;
}

export function unary<Req, Res>(
  client: grpc.Client,
  method: (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
  timeoutMs = 15_000,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) =>
      err ? reject(new ControlCallError(err.code, describeCallError(err))) : resolve(res),
    );
  });
}
