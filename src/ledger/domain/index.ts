/** Public surface of the relationship domain: events, aggregate, commands, command handler. */
export {
  RELATIONSHIP_EVENT_TYPES,
  RELATIONSHIP_STREAM_PREFIX,
  decodeRelationshipEvent,
  encodeRelationshipEvent,
  isRelationshipEventType,
  pointIdFor,
  relationshipEvent,
  relationshipStream,
  vmIdOfStream,
  type Consistency,
  type ChainDisk,
  type CycleKind,
  type DiskCompression,
  type DiskSpec,
  type DrillCheckName,
  type DrillCheckOutcome,
  type DrillResult,
  type DrillTrigger,
  type EventOfType,
  type FailoverKind,
  type JsonObject,
  type JsonValue,
  type PointDisk,
  type PointGroup,
  type RelationshipEvent,
  type RelationshipEventData,
  type RelationshipEventType,
} from "./events.js";
export { REPLICATION_STATES, type ReplicationStateName } from "./states.js";
export {
  RELATIONSHIP_SNAPSHOT_EVERY,
  RELATIONSHIP_SNAPSHOT_PREFIX,
  onRelationshipSnapshotIgnored,
  snapshotKeyOf,
  type SnapshotProblem,
} from "./relationshipCache.js";
export {
  RELATIONSHIP_FOLD_VERSION,
  evolve,
  foldRelationship,
  initialRelationshipState,
  type FailoverInfo,
  type GenerationHandover,
  type InFlightCycle,
  type RecoveryPoint,
  type RelationshipCounters,
  type RelationshipFailure,
  type RelationshipState,
  type ResyncApproval,
  type SkippedCycles,
  type DrillSummary,
  type SuspectPoint,
  type TestFailover,
  type UpstreamFailover,
} from "./relationship.js";
export {
  InvalidCommandInputError,
  InvalidTransitionError,
  NoCleanPointError,
  NoSuspectPointError,
  RecoveryPointLockedError,
  MergeBlockedByTestFailoverError,
  MergeInProgressError,
  NEXT_STEP,
  NoSuchMergeError,
  NoSuchTestFailoverError,
  OutOfOrderCycleError,
  PlannedFailoverNotReadyError,
  RecoveryPointUnavailableError,
  ResyncAlreadyApprovedError,
  StaleGenerationError,
  UpstreamFailoverRefusedError,
  TestFailoverExistsError,
  TestFailoversRunningError,
  UnexpectedGenerationError,
  UnknownRelationshipEventError,
} from "./errors.js";
export {
  executeCommand,
  loadRelationship,
  type CommandResult,
  type Decide,
  type ExecuteCommandOptions,
  type LoadedRelationship,
} from "./commandHandler.js";
export { enableReplication, type EnableReplicationInput } from "./commands/enableReplication.js";
export { startInitialReplication, type StartInitialReplicationInput } from "./commands/startInitialReplication.js";
export { commitCycle, type CommitCycleInput } from "./commands/commitCycle.js";
export { failCycle, type FailCycleInput } from "./commands/failCycle.js";
export { recordCycleSkipped, type RecordCycleSkippedInput } from "./commands/recordCycleSkipped.js";
export { startMerge, type StartMergeInput } from "./commands/startMerge.js";
export { completeMerge, type CompleteMergeInput } from "./commands/completeMerge.js";
export { markResyncRequired, type MarkResyncRequiredInput } from "./commands/markResyncRequired.js";
export { approveResync, type ApproveResyncInput } from "./commands/approveResync.js";
export { requestResync } from "./commands/requestResync.js";
export { resyncStartedMetadata, startResync, type StartResyncInput } from "./commands/startResync.js";
export { pause, type PauseInput } from "./commands/pause.js";
export { resume } from "./commands/resume.js";
export { refuseStaleGeneration, type RefuseStaleGenerationInput } from "./commands/refuseStaleGeneration.js";
export { startTestFailover, type StartTestFailoverInput } from "./commands/startTestFailover.js";
export { recordTestFailoverRunning, type RecordTestFailoverRunningInput } from "./commands/recordTestFailoverRunning.js";
export { stopTestFailover, type StopTestFailoverInput } from "./commands/stopTestFailover.js";
export { prepareFailover, type PrepareFailoverInput } from "./commands/prepareFailover.js";
export { failover, type FailoverInput } from "./commands/failover.js";
export { cancelFailover } from "./commands/cancelFailover.js";
export { acknowledgeGeneration, type AcknowledgeGenerationInput } from "./commands/acknowledgeGeneration.js";
export { recogniseCurrentPrimary, type RecogniseCurrentPrimaryInput } from "./commands/recogniseCurrentPrimary.js";
export { failoverOverCancelledOne, recogniseUpstreamFailover, type RecogniseUpstreamFailoverInput } from "./commands/recogniseUpstreamFailover.js";
export { completeFailover, type CompleteFailoverInput } from "./commands/completeFailover.js";
export { replacePrimary, type ReplacePrimaryInput } from "./commands/replacePrimary.js";
export { recordDownstreamFailover, type RecordDownstreamFailoverInput } from "./commands/recordDownstreamFailover.js";
export { cancelDownstreamFailover, type CancelDownstreamFailoverInput } from "./commands/cancelDownstreamFailover.js";
export { clearSuspectPoints, type ClearSuspectPointsInput } from "./commands/clearSuspectPoints.js";
export { recordVerificationDrill, type RecordVerificationDrillInput } from "./commands/recordVerificationDrill.js";
export { LAST_CLEAN_POINT, isLocked, lastCleanPoint } from "./pointSafety.js";
export {
  ENCRYPTION_SIGNAL,
  INCOMPRESSIBLE_RATIO,
  judgeSample,
  nextBaseline,
  shareOf,
  type CompressionSample,
  type EncryptionBaseline,
  type EncryptionVerdict,
} from "./encryptionSignal.js";
export { startReverseReplication, type StartReverseReplicationInput } from "./commands/startReverseReplication.js";
export { updateVmSpec } from "./commands/updateVmSpec.js";
export { continuesInitialReplication, resyncGoAhead, type ResyncMode, type TrackingLossReport } from "./resyncGoAhead.js";
