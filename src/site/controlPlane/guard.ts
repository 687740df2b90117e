import * as grpc from "@grpc/grpc-js";
import { QreplicaError, errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { isValidId } from "../../model/index.js";
import { peerIdentity, roleAllows, type RevocationList, type Role } from "../../transport/index.js";
import type { Caller } from "./caller.js";
import { peerHost, type Refusal, type RefusalAudit } from "./refusalAudit.js";
import { checkRequestIds } from "./requestIds.js";
import { UNDECODABLE } from "../tolerantDecoding.js";

/** A role a control call may require: agents hold none of them. */
export type ControlRole = Exclude<Role, "agent">;

/** The control-plane handler shape every RPC of ControlService is wired with. */
export type Guarded = <Req, Res>(needed: ControlRole, fn: (req: Req, caller: Caller) => Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

type AuthenticatedCall = { getAuthContext(): ReturnType<grpc.ServerUnaryCall<unknown, unknown>["getAuthContext"]>; getPath(): string };

const methodOf = (call: { getPath(): string }) => call.getPath().split("/").pop() || "this call";

const ISSUE_HINT = (name: string, needed: ControlRole) =>
  `use a certificate issued with 'qreplica pki issue --name ${name} --role ${needed}' (or higher), or on the site's host '--dir SITE_DIR', which presents the site's admin certificate`;

/** A control call the caller's role does not allow: the grpc status, and what the audit records. */
export class ControlCallRefusedError extends QreplicaError {
  readonly code = "CONTROL_CALL_REFUSED" as const;
  constructor(
    readonly refusal: Omit<Refusal, "vmId" | "vmIdMalformed" | "peer">,
    readonly grpcCode: grpc.status,
  ) {
    super(refusal.message);
  }
}

/**
 * Who is calling, and whether their role allows `needed`. Throws ControlCallRefusedError whose
 * message names the caller, its role, the role needed and the fix (invariant 8: no control action
 * by an identity whose role does not allow it).
 */
export function authorizeCall(call: AuthenticatedCall, needed: ControlRole, revocations?: RevocationList): Caller {
  const rpc = methodOf(call);
  let identity: ReturnType<typeof peerIdentity>;
  try {
    identity = peerIdentity(call);
  } catch (err) {
    const refusal = { identity: "(no verified certificate)", role: "none", rpc, needed, reason: "UNAUTHENTICATED", message: errorMessage(err) } as const;
    throw new ControlCallRefusedError(refusal, grpc.status.UNAUTHENTICATED);
  }
  const name = identity.commonName;
  const revoked = revocations?.refusal(identity);
  if (revoked) {
    const refusal = { identity: name, role: identity.role ?? "none", rpc, needed, reason: "CERTIFICATE_REVOKED", message: revoked } as const;
    throw new ControlCallRefusedError(refusal, grpc.status.UNAUTHENTICATED);
  }
  if (!identity.role) {
    const message =
      `'${name}' may not call ${rpc}: its certificate carries no qreplica role (issued before roles existed, or by hand), so it has no control-plane rights; ` +
      `re-issue it with 'qreplica pki issue --name ${name} --role ${needed}' (${rpc} needs ${needed})`;
    throw new ControlCallRefusedError({ identity: name, role: "none", rpc, needed, reason: "NO_ROLE", message }, grpc.status.PERMISSION_DENIED);
  }
  if (identity.role === "agent" || !roleAllows(identity.role, needed)) {
    const agent = identity.role === "agent";
    const what = agent ? "agent certificates may only replicate (data plane) and are refused on the control plane" : `${rpc} needs role ${needed}`;
    const message = `'${name}' (role ${identity.role}) may not call ${rpc}: ${what}; ${ISSUE_HINT(name, needed)}`;
    const reason = agent ? "AGENT_ON_CONTROL_PLANE" : "ROLE_INSUFFICIENT";
    throw new ControlCallRefusedError({ identity: name, role: identity.role, rpc, needed, reason, message }, grpc.status.PERMISSION_DENIED);
  }
  return { identity: name, role: identity.role };
}

/** The VM a refused request named, as the audit may record it: only a well-formed id, never arbitrary caller text. */
function targetVm(request: unknown): { vmId: string | undefined; vmIdMalformed: boolean } {
  const v = typeof request === "object" && request !== null ? (request as { vmId?: unknown }).vmId : undefined;
  if (v === undefined || v === "") return { vmId: undefined, vmIdMalformed: false };
  return isValidId(v) ? { vmId: v, vmIdMalformed: false } : { vmId: undefined, vmIdMalformed: true };
}

/**
 * Wraps a handler: checks the caller's role first, then the request's ids, then runs `fn` with the caller so that every
 * command it causes can record who asked for it. Refusals are logged and recorded in the ledger's audit stream
 * before the caller is answered; errors become grpc statuses.
 */
export function guardedWith(logger: Logger, codeOf: (err: unknown) => grpc.status, audit: RefusalAudit, revocations: () => RevocationList | undefined = () => undefined): Guarded {
  return <Req, Res>(needed: ControlRole, fn: (req: Req, caller: Caller) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      let caller: Caller;
      try {
        caller = authorizeCall(call, needed, revocations());
      } catch (err) {
        logger.warn({ method: methodOf(call), needed, peer: call.getPeer() }, errorMessage(err));
        const refused = () => callback({ code: codeOf(err), details: errorMessage(err) });
        if (!(err instanceof ControlCallRefusedError)) return refused();
        void audit.record({ ...err.refusal, ...targetVm(call.request), peer: peerHost(call.getPeer()) }).then(refused);
        return;
      }
      const undecodable = typeof call.request === "object" && call.request !== null ? (call.request as { [UNDECODABLE]?: string })[UNDECODABLE] : undefined;
      if (undecodable !== undefined) {
        return callback({
          code: grpc.status.INVALID_ARGUMENT,
          details: `${methodOf(call)}: the request is not a valid protobuf message of this call (${undecodable}); use a client built from proto/qreplica/v1`,
        });
      }
      // Ids name ledger streams and files: a malformed one is refused before any handler runs.
      Promise.resolve(call.request)
        .then((req) => (checkRequestIds(req), fn(req, caller)))
        .then(
          (res) => callback(null, res),
          (err: unknown) => callback({ code: codeOf(err), details: errorMessage(err) }),
        );
    };
}
