import type { Role } from "../../transport/roles.js";

/** Who made a control call: the verified certificate's identity and the role bound into it. */
export interface Caller {
  identity: string;
  role: Role;
}

/** Stored as the metadata of every ledger event a control command causes: who did it. */
export function actorMetadata(caller: Caller): { actor: string; actorRole: Role } {
  return { actor: caller.identity, actorRole: caller.role };
}
