export { GuestAgentClient, type ExecuteOptions, type FsfreezeStatus, type GuestAgentOptions } from "./client.js";
export {
  GuestAgentCommandError,
  GuestAgentProtocolError,
  GuestAgentThawError,
  GuestAgentTimeoutError,
  GuestAgentUnavailableError,
} from "./errors.js";
export { withFrozenFilesystems, type FrozenResult, type WithFrozenFilesystemsOptions } from "./freeze.js";
