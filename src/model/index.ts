export * from "./ids.js";
export * from "./trackingLost.js";
export * from "./errors.js";
export * from "./vmSpec.js";
