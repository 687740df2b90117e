export { CaptureCycle, DiskCycle, qmpBitmapHandoff, type TrackingHandoff, type Consistency, type CycleKind } from "./captureCycle.js";
export {
  CaptureNotEnabledError,
  CycleFinishedError,
  CycleInProgressError,
  DiskNodeNotFoundError,
  DiskResizedDuringCutoffError,
  IothreadDiskError,
  ResyncRequiredError,
  ScratchSpaceLowError,
  SnapshotBrokenError,
} from "./errors.js";
export type { ByteRange, CaptureExtent, ExtentReadOptions, ExtentReadStats } from "./extentReader.js";
export type { DiskReport } from "./reconcile.js";
export { VmCapture, type CaptureDiskConfig, type Quiescer, type ReconcileReport, type VmCaptureOptions, type VmCaptureStatus } from "./vmCapture.js";
export { DEFAULT_GROUP_JOIN_TIMEOUT_MS, GroupCutoff, type GroupCut, type GroupPaused } from "./groupCutoff.js";
