export * from "./ids.js";
export * from "./trackingLost.js";
