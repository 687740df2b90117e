export { OverlayError, VmLaunchError, VmSpecError } from "./errors.js";
export { launchVm, type LaunchedVm, type LaunchVmOptions, type StopResult } from "./launchVm.js";
export { netdevId, nicArgs, resolveNicBackends, type LaunchNetwork, type NetworkBackend } from "./network.js";
export { createThrowawayOverlay, type ThrowawayOverlay } from "./overlay.js";
export { LAUNCHER_KINDS, type LauncherKind, type LaunchRequest, type SiteVm, type VmLauncher, type VmLifetime, type VmRef } from "./port.js";
export { QemuLauncher } from "./qemuLauncher.js";
export { LibvirtLauncher, type LibvirtLauncherOptions } from "./libvirtLauncher.js";
export { domainXml, launchOwnerOf, LAUNCH_XMLNS } from "./libvirtDomainXml.js";
export { DEFAULT_LIBVIRT_URI, SiteLaunchers, type LauncherSettings } from "./siteLaunchers.js";
export {
  DISK_BUSES,
  FORBIDDEN_EXTRA_ARGS,
  NIC_MODELS,
  validateVmSpec,
  type DiskBus,
  type NicModel,
  type VmDiskSpec,
  type VmNicSpec,
  type VmSpec,
} from "../../model/vmSpec.js";
