import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { peerIdentity, roleAllows, type Role } from "../../transport/index.js";
import type { Caller } from "./caller.js";
import { checkRequestIds } from "./requestIds.js";

/** A role a control call may require: agents hold none of them. */
export type ControlRole = Exclude<Role, "agent">;

/** The control-plane handler shape every RPC of ControlService is wired with. */
export type Guarded = <Req, Res>(needed: ControlRole, fn: (req: Req, caller: Caller) => Promise<Res>) => grpc.handleUnaryCall<Req, Res>;

type AuthenticatedCall = { getAuthContext(): ReturnType<grpc.ServerUnaryCall<unknown, unknown>["getAuthContext"]>; getPath(): string };

const methodOf = (call: { getPath(): string }) => call.getPath().split("/").pop() || "this call";

const ISSUE_HINT = (name: string, needed: ControlRole) =>
  `use a certificate issued with 'qreplica pki issue --name ${name} --role ${needed}' (or higher), or on the site's host '--dir SITE_DIR', which presents the site's admin certificate`;

/**
 * Who is calling, and whether their role allows `needed`. Throws a grpc status error whose message
 * names the caller, its role, the role needed and the fix (invariant 8: no control action by an
 * identity whose role does not allow it).
 */
export function authorizeCall(call: AuthenticatedCall, needed: ControlRole): Caller {
  let identity: ReturnType<typeof peerIdentity>;
  try {
    identity = peerIdentity(call);
  } catch (err) {
    throw Object.assign(new Error(errorMessage(err)), { grpcCode: grpc.status.UNAUTHENTICATED });
  }
  const name = identity.commonName;
  const method = methodOf(call);
  if (!identity.role) {
    throw Object.assign(
      new Error(
        `'${name}' may not call ${method}: its certificate carries no qreplica role (issued before roles existed, or by hand), so it has no control-plane rights; ` +
          `re-issue it with 'qreplica pki issue --name ${name} --role ${needed}' (${method} needs ${needed})`,
      ),
      { grpcCode: grpc.status.PERMISSION_DENIED },
    );
  }
  if (identity.role === "agent" || !roleAllows(identity.role, needed)) {
    const what = identity.role === "agent" ? "agent certificates may only replicate (data plane) and are refused on the control plane" : `${method} needs role ${needed}`;
    throw Object.assign(new Error(`'${name}' (role ${identity.role}) may not call ${method}: ${what}; ${ISSUE_HINT(name, needed)}`), {
      grpcCode: grpc.status.PERMISSION_DENIED,
    });
  }
  return { identity: name, role: identity.role };
}

/**
 * Wraps a handler: checks the caller's role first, then the request's ids, then runs `fn` with the caller so that every
 * command it causes can record who asked for it. Refusals are logged; errors become grpc statuses.
 */
export function guardedWith(logger: Logger, codeOf: (err: unknown) => grpc.status): Guarded {
  return <Req, Res>(needed: ControlRole, fn: (req: Req, caller: Caller) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      let caller: Caller;
      try {
        caller = authorizeCall(call, needed);
      } catch (err) {
        logger.warn({ method: methodOf(call), needed, peer: call.getPeer() }, errorMessage(err));
        callback({ code: codeOf(err), details: errorMessage(err) });
        return;
      }
      // Ids name ledger streams and files: a malformed one is refused before any handler runs.
      Promise.resolve(call.request).then((req) => (checkRequestIds(req), fn(req, caller))).then(
        (res) => callback(null, res),
        (err: unknown) => callback({ code: codeOf(err), details: errorMessage(err) }),
      );
    };
}
