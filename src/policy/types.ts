/**
 * A replication policy as the rest of the code sees it, once parsed and validated (the YAML form
 * and its schema live beside this file). Shared by the site (retention, health, HelloAck) and the
 * agent (frequency, compression, freeze, bandwidth): it imports nothing of either role.
 * Durations are in seconds, sizes in bytes, times of day in the site's local time "HH:MM".
 */

/** A span of the week: the days it applies on and a time-of-day range; `to` before `from` wraps past midnight. */
export interface TimeWindow {
  /** 0 = Sunday ... 6 = Saturday; empty or absent means every day. */
  days?: number[];
  from: string;
  to: string;
}

/**
 * Keeps points for `keepForSeconds` after their cut-off, at most one per `everySeconds` (slots
 * aligned to the epoch in UTC: the slot's newest application-consistent point, else its first;
 * a slot counts while it overlaps the last `keepForSeconds`); `everySeconds` 0 keeps every point.
 * Tiers are listed finest first; a point is kept while any tier keeps it. The rules in full:
 * retentionPlan.ts.
 */
export interface RetentionTier {
  everySeconds: number;
  keepForSeconds: number;
}

export interface BandwidthLimit {
  /** Bytes per second to one replica site; 0 means unlimited. */
  bytesPerSecond: number;
  /** When absent: always. */
  window?: TimeWindow;
}

export type FrequencySpec = { kind: "interval"; seconds: number } | { kind: "continuous"; minGapSeconds: number };

export interface ReplicationPolicy {
  name: string;
  description?: string;
  frequency: FrequencySpec;
  retention: {
    tiers: RetentionTier[];
    /** Hard floor: never fewer points than this (the newest ones), whatever the tiers say. */
    minPoints: number;
    /**
     * Each new point is locked this long after its cut-off: no command, by any role, merges, drops
     * or completes it away meanwhile (object-lock style); the lock is recorded with the point, so a
     * later policy change does not shorten it. Absent: no lock.
     */
    lockSeconds?: number;
  };
  /** Application-consistent points through qemu-guest-agent freeze/thaw; absent: crash-consistent only. */
  applicationConsistent?: {
    everySeconds: number;
    /** Longest the guest stays frozen; past it the point is taken crash-consistent and tagged. */
    freezeTimeoutMs: number;
  };
  /** zstd level 1-19. */
  compressionLevel: number;
  /** The first matching entry applies; none matching: unlimited. */
  bandwidth: BandwidthLimit[];
  initialReplication: { kind: "now" } | { kind: "at"; at: string };
  resync: { mode: "automatic"; window?: TimeWindow } | { mode: "manual" };
  /** Health turns Critical when the newest point is older than this. */
  rpoAlertSeconds: number;
  /** Scheduled verification drills of the newest point (README "Verified recovery points"); absent: none. */
  verification?: VerificationPolicy;
}

/**
 * What a drill checks in the test VM, after "VM running" (always checked). At least one is set;
 * each check runs once the previous one passed, all within the drill's timeout.
 */
export interface VerificationChecks {
  /** A JavaScript regular expression that a line of the guest's serial console (COM1) must match. */
  serialPattern?: string;
  /** qemu-guest-agent in the guest answers guest-ping. */
  guestAgent?: boolean;
  /** A TCP port inside the guest accepts a connection (through a host forward on the isolated network). */
  tcpPort?: number;
  /** Run in the guest through qemu-guest-agent (guest-exec); passes on exit status 0. argv[0] is the program. */
  guestCommand?: string[];
}

/**
 * A drill: a test failover of the newest point on the isolated network, the checks, then the test
 * VM is stopped; the result is recorded with the point in the ledger.
 */
export interface VerificationPolicy {
  /** A drill is due this long after the previous one ended (the first: as soon as a point exists). */
  everySeconds: number;
  /** Health warns (POINT_NOT_VERIFIED) when no drill verified a point within this. */
  windowSeconds: number;
  /** The whole drill (boot and every check) must pass within this, else it fails naming the check that was waited on. */
  timeoutSeconds: number;
  checks: VerificationChecks;
}

/** A policy as stored: each apply of a changed spec is a new version. */
export interface PolicyVersion {
  policy: ReplicationPolicy;
  version: number;
  appliedAt: string;
  appliedBy: string;
}
