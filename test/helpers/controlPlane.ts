/**
 * A test's own client of a site's control plane, with the certificate (and so the role) the test
 * chooses: typed calls that reject with the grpc ServiceError (its code and details), and raw
 * calls by method path so a test can reach every RPC of the service definition.
 */
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { ControlServiceClient } from "../../src/gen/qreplica/v1/control.js";
import { issueCertificate, loadSiteCredentials, siteDial, type Role } from "../../src/transport/index.js";

export interface CredentialFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

/** A gRPC client's credentials and options for a site, as the CLI dials it (an IP address is not sent as the TLS server name: Node's DEP0123). */
export function dialArgs(address: string, files: CredentialFiles): [grpc.ChannelCredentials, grpc.ChannelOptions] {
  const dial = siteDial(address, loadSiteCredentials(files));
  return [dial.credentials, dial.options];
}

export function controlClientAs(address: string, files: CredentialFiles): ControlServiceClient {
  return new ControlServiceClient(address, ...dialArgs(address, files));
}

/** A certificate of the deployment CA in `caDir` for `name` with `role` (null: none at all). */
export async function issueRole(caDir: string, name: string, role: Role | null, dir: string): Promise<CredentialFiles> {
  const f = await issueCertificate({ caDir, name, dir: join(dir, name), sans: ["localhost"], role, days: 2 });
  return { caFile: f.caFile, certFile: f.certFile, keyFile: f.keyFile };
}

/** A unary call as a promise; rejects with the grpc ServiceError (`code`, `details`). */
export function call<Req, Res>(
  client: ControlServiceClient,
  method: (req: Req, metadata: grpc.Metadata, options: Partial<grpc.CallOptions>, cb: (err: grpc.ServiceError | null, res: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
  timeoutMs = 60_000,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    method.call(client, request, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** The status a call ends with; fails the test when the call succeeds. */
export async function refusal<Res>(p: Promise<Res>): Promise<grpc.ServiceError> {
  const outcome = await p.then(
    () => undefined,
    (e: unknown) => e as grpc.ServiceError,
  );
  if (!outcome) throw new Error("the call succeeded; a refusal was expected");
  return outcome;
}

/** Calls `path` with an empty message (every proto3 request's defaults) and returns how it ended. */
export function rawCall(client: grpc.Client, path: string, timeoutMs = 15_000): Promise<{ code: grpc.status; details: string }> {
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.alloc(0),
      new grpc.Metadata(),
      { deadline: Date.now() + timeoutMs },
      (err) => resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: "" }),
    );
  });
}
