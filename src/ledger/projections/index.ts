/** Read models folded from the ledger; each can be rebuilt from scratch at any time. */
export { RecoveryPointsProjection, type CatalogueDisk, type CataloguePoint } from "./recoveryPoints.js";
export {
  StatusProjection,
  type StatusError,
  type StatusFailover,
  type StatusTestFailover,
  type VmStatus,
} from "./status.js";
