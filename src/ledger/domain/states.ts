/**
 * The relationship's states. Hyper-V's replication states are the floor (WMI ReplicationState:
 * NotEnabled, ReadyForInitialReplication, WaitingForInitialReplication, Replicating,
 * SyncedReplicationComplete, FailOverWaitingCompletion, FailedOver, Paused, plus resync required
 * and resynchronising); test failover is not a state but the orthogonal `testFailovers` map.
 */
export const REPLICATION_STATES = [
  "not-enabled",
  "ready-for-initial-replication",
  "initial-replication-in-progress",
  "replicating",
  "paused",
  "resync-required",
  "resynchronising",
  "prepared-for-planned-failover",
  "failed-over-waiting-completion",
  "failed-over",
] as const;

export type ReplicationStateName = (typeof REPLICATION_STATES)[number];
