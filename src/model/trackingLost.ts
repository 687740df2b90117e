/**
 * Codes of Hello.tracking_lost (a string on the wire, so new ones need no contract change) whose
 * meaning the site acts on. The others ("BITMAP_MISSING", "BITMAP_INCONSISTENT", "NOT_ENABLED",
 * "TRACKING_LOST", ...) all mean change tracking of a protected disk was lost.
 */

/**
 * The agent started the cycle that enables change tracking (an initial replication, or a resync)
 * and never heard its ack (the site, the link or the agent stopped first): nothing was lost by a
 * crash of QEMU; the site may or may not have committed that cycle.
 */
export const ENABLE_UNACKNOWLEDGED = "ENABLE_UNACKNOWLEDGED";
