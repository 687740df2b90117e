/** Read models folded from the ledger; each can be rebuilt from scratch at any time. */
export { RecoveryPointsProjection, type CatalogueDisk, type CataloguePoint, type PointCycleFacts, type PointVerification, type RecoveryPointsSnapshot } from "./recoveryPoints.js";
export {
  LedgerReadModels,
  READ_MODELS_FOLD_VERSION,
  READ_MODELS_SNAPSHOT_KEY,
  rebuildReadModels,
  type ReadModelsOptions,
  type RebuildProgress,
  type RebuildReport,
} from "./readModels.js";
export {
  StatusProjection,
  type StatusError,
  type StatusFailover,
  type StatusSnapshot,
  type StatusTestFailover,
  type VmStatus,
} from "./status.js";
