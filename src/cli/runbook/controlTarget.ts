import { controlClient, unary } from "../siteClient.js";
import { FailoverKind, RelationshipState, type ControlServiceClient, type LaunchedVmInfo } from "../../gen/qreplica/v1/control.js";
import type { LaunchedVm, RunbookTarget, SiteRef, VmReplicaStatus } from "../../runbook/index.js";

/** Launching a VM includes creating overlays and booting QEMU up to "running". */
const LAUNCH_TIMEOUT_MS = 120_000;

const stateName = (s: RelationshipState) =>
  (RelationshipState[s] ?? "UNSPECIFIED")
    .replace(/^RELATIONSHIP_STATE_/, "")
    .toLowerCase()
    .replaceAll("_", "-");

const launchedOf = (v: LaunchedVmInfo): LaunchedVm => ({ name: v.name, serialLog: v.serialLog, qmpSocket: v.qmpSocket, pid: v.pid, timeToRunningMs: Number(v.timeToRunningMs) });

/** The replica site's control plane: `dir` presents the site's admin certificate, `address` the runbook's own. */
export function siteControlClient(site: SiteRef): ControlServiceClient {
  return "dir" in site ? controlClient({ dir: site.dir }) : controlClient({ site: site.address, ca: site.ca, cert: site.cert, key: site.key });
}

/** The runbook's operations over the replica site's gRPC control plane (mutual TLS). */
export function controlTarget(site: SiteRef, client: ControlServiceClient = siteControlClient(site)): RunbookTarget {
  // QEMU pids mean something only on the site's own host, which a site directory implies.
  const local = "dir" in site;

  const getStatus = async (vm: string): Promise<VmReplicaStatus> => {
    const r = await unary(client, client.getStatus, { vmId: vm });
    const rel = r.relationships.find((x) => x.vmId === vm);
    if (!rel) throw new Error(`no replication relationship for VM '${vm}' on site ${r.siteId}`);
    return { vm, state: stateName(rel.state), generation: Number(rel.generation), testFailoverActive: rel.testFailoverActive };
  };

  return {
    getStatus,
    async listRecoveryPoints(vm) {
      const r = await unary(client, client.listRecoveryPoints, { vmId: vm });
      return r.recoveryPoints.map((p) => p.recoveryPointId);
    },
    async startTestFailover(vm, point) {
      const r = await unary(client, client.startTestFailover, { vmId: vm, recoveryPointId: point ?? "" }, LAUNCH_TIMEOUT_MS);
      if (!r.vm) throw new Error(`VM ${vm}: the site started test ${r.testId} but reported no VM`);
      return { testId: r.testId, pointId: r.recoveryPointId, vm: launchedOf(r.vm) };
    },
    async stopTestFailover(vm, testId) {
      return (await unary(client, client.stopTestFailover, { vmId: vm, testId }, 60_000)).stoppedTestIds;
    },
    async failover(vm, kind, point) {
      const r = await unary(
        client,
        client.failover,
        { vmId: vm, kind: kind === "planned" ? FailoverKind.FAILOVER_KIND_PLANNED : FailoverKind.FAILOVER_KIND_UNPLANNED, recoveryPointId: point ?? "", startVm: true },
        LAUNCH_TIMEOUT_MS,
      );
      return { pointId: r.recoveryPointId, generation: Number(r.generation), ...(r.vm ? { vm: launchedOf(r.vm) } : {}) };
    },
    async completeFailover(vm) {
      return (await unary(client, client.completeFailover, { vmId: vm }, 60_000)).droppedRecoveryPointIds;
    },
    async cancelFailover(vm) {
      return (await unary(client, client.cancelFailover, { vmId: vm }, 60_000)).state;
    },
    async vmRunning(vm, launched, test) {
      // The control plane has no per-VM liveness call yet: the relationship says the failover (or
      // test) is still in place, and on the site's host the QEMU process must still exist.
      const st = await getStatus(vm);
      const inPlace = test ? st.testFailoverActive : st.state === "failed-over-waiting-completion" || st.state === "failed-over";
      if (!inPlace || !local) return inPlace;
      try {
        process.kill(launched.pid, 0);
        return true;
      } catch (err) {
        return (err as NodeJS.ErrnoException).code === "EPERM";
      }
    },
    close: () => client.close(),
  };
}
