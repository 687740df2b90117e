export { QmpClient, type QmpConnectOptions, type QmpEvent, type QmpGreeting } from "./client.js";
export { QmpClosedError, QmpCommandError, QmpConnectError, QmpProtocolError, QmpTimeoutError } from "./errors.js";
export * from "./blockNodes.js";
