export { QemuToolError } from "./errors.js";
export { QemuProcess, spawnQemu, type ProcessExit } from "./qemuProcess.js";
export { compareImages, convertImage, createImage, imageInfo, resizeImage, type CompareResult, type ImageInfo } from "./qemuImg.js";
export { runTool, type ToolResult } from "./runTool.js";
export { escapeOpt, startStorageDaemon, storageDaemonArgs, type StorageDaemonDisk, type StorageDaemonExport, type StorageDaemonOptions } from "./storageDaemon.js";
export { kvmUsable, startSystemVm, systemVmArgs, type SystemVmDisk, type SystemVmOptions } from "./systemVm.js";
export { startStorageDaemonVm, type StorageDaemonVm } from "./storageDaemonVm.js";
