import type { RelationshipState } from "../../ledger/index.js";
import { validateVmSpec, type VmSpec } from "../launcher/index.js";

/**
 * The replicated spec when the primary sent one; otherwise a minimal machine that boots the first
 * disk (a VM protected without a spec can still be tested and failed over).
 */
export function launchSpecOf(state: RelationshipState): VmSpec {
  const spec = state.vmSpec;
  if (spec && Object.keys(spec).length > 0) return validateVmSpec(spec);
  return validateVmSpec({
    machine: "q35",
    cpus: 1,
    memoryMiB: 128,
    disks: state.disks.map((d, i) => ({ diskId: d.diskId, bus: "ide", ...(i === 0 ? { bootIndex: 0 } : {}) })),
    nics: [],
  });
}
