/**
 * Roles are bound into a certificate at issuance (`qreplica pki issue --role`), so a stolen agent
 * key can never fail a VM over: the site checks the role of every control call.
 * - agent: the data plane only (Replicate); refused on every control RPC.
 * - viewer: reads the control plane (status, points, events, authorizations).
 * - operator: viewer + failover, test failover, complete, cancel, reverse, pause, resume, resync, runbooks.
 * - admin: operator + authorization entries and policies.
 */
export const ROLES = ["agent", "viewer", "operator", "admin"] as const;
export type Role = (typeof ROLES)[number];

export function isRole(value: unknown): value is Role {
  return typeof value === "string" && (ROLES as readonly string[]).includes(value);
}

const CONTROL_RANK: Record<Role, number> = { agent: 0, viewer: 1, operator: 2, admin: 3 };

/** Whether a caller holding `role` may make a control call that needs `needed` (never true for agents). */
export function roleAllows(role: Role, needed: Exclude<Role, "agent">): boolean {
  return CONTROL_RANK[role] >= CONTROL_RANK[needed];
}
