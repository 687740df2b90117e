import type { Logger } from "../../common/logger.js";
import type { EventStore } from "../../ledger/index.js";
import type { Role } from "../../transport/roles.js";

/**
 * Refused calls (control calls the caller's role does not allow, and Hellos of unauthorized
 * primaries), recorded in the ledger (stream `audit`, hash-chained like every stream)
 * so that who tried what, and was refused, is on record and not only in the site's log. Only
 * admins read this stream (see ListEvents): it names identities and what they probed.
 */
export const AUDIT_STREAM = "audit";
export const CONTROL_CALL_REFUSED = "ControlCallRefused";

/** Why a call was refused. */
export type RefusalReason =
  /** No verified client certificate (cannot happen over mutual TLS; recorded if it ever does). */
  | "UNAUTHENTICATED"
  /** A certificate without a qreplica role (issued before roles existed, or by hand). */
  | "NO_ROLE"
  /** An agent certificate: data plane only. */
  | "AGENT_ON_CONTROL_PLANE"
  /** A viewer or operator calling what needs a higher role. */
  | "ROLE_INSUFFICIENT"
  /** Data plane: a Hello from a primary identity no authorization entry names. */
  | "PRIMARY_NOT_AUTHORIZED"
  /** Either plane: the peer's certificate is on the deployment CA's revocation list (crlFile). */
  | "CERTIFICATE_REVOKED"
  /** Data plane: a Hello claiming to be the VM's forwarding site (upstream failover, forwarding_site) from another identity. */
  | "FORWARDING_CLAIM_REFUSED";

export interface Refusal {
  /** The certificate's CN, never its contents. */
  identity: string;
  role: Role | "none";
  rpc: string;
  /** The role the call needs, or for the data plane's Replicate an authorization entry naming the identity. */
  needed: Exclude<Role, "agent"> | "authorization";
  reason: RefusalReason;
  /** What the caller was told (names the caller, its role, the role needed and the fix). */
  message: string;
  /** The VM the request named: a valid id, or undefined (absent or malformed, see `vmIdMalformed`). */
  vmId: string | undefined;
  vmIdMalformed: boolean;
  /** The peer's address without its port. */
  peer: string | undefined;
}

/** The peer's address without its port ("127.0.0.1:53122" -> "127.0.0.1"): ports change with every connection. */
export function peerHost(peer: string): string | undefined {
  return peer.replace(/:\d+$/, "") || undefined;
}

/** At most this many distinct VM ids and peers are listed in one coalesced event (the count covers the rest). */
const MAX_LISTED = 10;
const WINDOW_MS = 60_000;
/** Windows of a key refused without pause double up to this: a forgotten misconfigured agent adds about one event an hour. */
const MAX_WINDOW_MS = 60 * 60_000;

interface Window {
  /** Refusals since the last event of this key, not yet recorded. */
  pending: number;
  firstAt: string | undefined;
  lastAt: string | undefined;
  vmIds: Set<string>;
  malformedVmIds: number;
  peers: Set<string>;
  last: Refusal;
  /** This window's length: doubles with every window that ends with refusals pending. */
  spanMs: number;
  timer: NodeJS.Timeout;
}

/**
 * Records refusals without letting a flood of them grow the ledger without bound. The rule: the
 * first refusal of an (identity, role, RPC) is recorded at once, as its own event (count 1), and
 * opens a one-minute window; identical refusals within the window are only counted, and when the
 * window ends they become ONE event (count N, first and last time, the VM ids and peers seen, at
 * most ten of each); a key still refused then opens the next window, twice as long (up to an
 * hour), and a window that ends without refusals closes the key. A flood of one identity on one
 * RPC therefore adds about log2(60) + hours events, e.g. ~30 a day for an agent left refused
 * forever, whatever its call rate. Keys are bounded too: a call reaches the
 * guard only after a TLS handshake with a CA-signed certificate, so there are at most
 * certificates x RPCs of them. The VM id is not part of the key (a caller trying every VM id
 * would otherwise open a window per id). Counts pending at a stop are recorded by `flush`.
 */
export class RefusalAudit {
  private readonly windows = new Map<string, Window>();
  private tail: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly store: EventStore,
    private readonly logger: Logger,
    private readonly windowMs = WINDOW_MS,
  ) {}

  /** Resolves once the refusal is on record (first of its window) or counted (the rest). Never rejects. */
  record(r: Refusal): Promise<void> {
    if (this.closed) return Promise.resolve();
    const key = JSON.stringify([r.identity, r.role, r.rpc]);
    const now = new Date().toISOString();
    const open = this.windows.get(key);
    if (open) {
      open.pending++;
      open.firstAt ??= now;
      open.lastAt = now;
      open.last = r;
      this.note(open, r);
      return Promise.resolve();
    }
    const w: Window = {
      pending: 0,
      firstAt: undefined,
      lastAt: undefined,
      vmIds: new Set(),
      malformedVmIds: 0,
      peers: new Set(),
      last: r,
      spanMs: this.windowMs,
      timer: this.timer(key, this.windowMs),
    };
    this.windows.set(key, w);
    const single: Window = { ...w, pending: 1, firstAt: now, lastAt: now, vmIds: new Set(), malformedVmIds: 0, peers: new Set() };
    this.note(single, r);
    return this.append(single);
  }

  /** Resolves once every event started so far is on record (or its failure logged). */
  settled(): Promise<void> {
    return this.tail;
  }

  /** Records every count still pending and closes the windows (at the site's stop). */
  async flush(): Promise<void> {
    this.closed = true;
    for (const w of this.windows.values()) {
      clearTimeout(w.timer);
      if (w.pending > 0) void this.append(w);
    }
    this.windows.clear();
    await this.tail;
  }

  private timer(key: string, ms: number): NodeJS.Timeout {
    const t = setTimeout(() => this.closeWindow(key), ms);
    // A window must not keep a stopping process alive: flush() records what it holds.
    t.unref();
    return t;
  }

  private closeWindow(key: string): void {
    const w = this.windows.get(key);
    if (!w) return;
    if (w.pending === 0) {
      this.windows.delete(key);
      return;
    }
    void this.append({ ...w, vmIds: new Set(w.vmIds), peers: new Set(w.peers) });
    // Still being refused: one more window, twice as long (up to an hour).
    const spanMs = Math.min(w.spanMs * 2, Math.max(MAX_WINDOW_MS, this.windowMs));
    this.windows.set(key, {
      pending: 0,
      firstAt: undefined,
      lastAt: undefined,
      vmIds: new Set(),
      malformedVmIds: 0,
      peers: new Set(),
      last: w.last,
      spanMs,
      timer: this.timer(key, spanMs),
    });
  }

  private note(w: Window, r: Refusal): void {
    if (r.vmId !== undefined && w.vmIds.size < MAX_LISTED) w.vmIds.add(r.vmId);
    if (r.vmIdMalformed) w.malformedVmIds++;
    if (r.peer !== undefined && w.peers.size < MAX_LISTED) w.peers.add(r.peer);
  }

  /** Appends in order, one at a time; a failed write is logged, never thrown at the refused caller. */
  private append(w: Window): Promise<void> {
    const r = w.last;
    const data = {
      identity: r.identity,
      role: r.role,
      rpc: r.rpc,
      needed: r.needed,
      reason: r.reason,
      message: r.message,
      count: w.pending,
      firstAt: w.firstAt,
      lastAt: w.lastAt,
      vmIds: [...w.vmIds],
      ...(w.malformedVmIds > 0 ? { malformedVmIds: w.malformedVmIds } : {}),
      peers: [...w.peers],
    };
    const done = this.tail.then(() =>
      this.store.append(AUDIT_STREAM, [{ type: CONTROL_CALL_REFUSED, data, metadata: { actor: r.identity, actorRole: r.role } }], "any").then(
        () => undefined,
        (err: unknown) => this.logger.error({ err, refusal: data }, "could not record a refused control call in the ledger's audit stream"),
      ),
    );
    this.tail = done;
    return done;
  }
}
