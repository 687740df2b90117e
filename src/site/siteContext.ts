import type { Logger } from "../common/logger.js";
import type { EventStore, LedgerReadModels } from "../ledger/index.js";
import type { ReplicaStorage } from "../storage/index.js";
import type { ReplicateSession } from "./dataPlane/replicateSession.js";
import type { Relationships } from "./relationships/relationships.js";
import type { FailoverService } from "./failover/failoverService.js";
import { VmSerializer } from "./vmSerializer.js";
import { SiteAuthorizations } from "./authorizations.js";
import { RefusalAudit } from "./controlPlane/refusalAudit.js";
import { AgentActivity } from "./health/activity.js";
import type { HealthMonitor } from "./health/monitor.js";
import type { DrillService } from "./drills/drillService.js";
import type { SitePolicies } from "./sitePolicies.js";
import type { RevocationList } from "../transport/index.js";
import type { Extensions } from "./extension/extensions.js";

/** What the site may tell a connected agent outside a cycle (pause, resume, resync). */
export type AgentNotice = Parameters<ReplicateSession["notify"]>[0];

/** What every request handler of a running site shares. */
export class SiteContext {
  readonly serializer = new VmSerializer();
  /** When each VM's primary agent was last heard from, for health's silent-agent rule. */
  readonly activity = new AgentActivity();
  /** Set by the server once started: status and measure evaluate health through it. */
  health: HealthMonitor | undefined;
  /** Extended replication: this site's forwarding of points to third sites (set by the server). */
  extensions: Extensions | undefined;
  /** Verification drills (`qreplica verify`, the policies' schedules); set once the site serves. */
  drills: DrillService | undefined;
  /** The deployment CA's revocation list when the site's config names one (crlFile). */
  revocations: RevocationList | undefined;
  private readonly sessions = new Map<string, ReplicateSession>();
  private authz: SiteAuthorizations | undefined;
  private audit: RefusalAudit | undefined;
  /** Set by the site's stop: no new retention step starts (one under way is waited for). */
  private stopping = false;

  constructor(
    readonly siteId: string,
    readonly dir: string,
    readonly store: EventStore,
    readonly storage: ReplicaStorage,
    readonly relationships: Relationships,
    readonly failovers: FailoverService,
    readonly logger: Logger,
    /** Status and recovery points, kept current by subscription (src/ledger/projections/readModels.ts). */
    readonly readModels: LedgerReadModels,
    /** Policies and bindings; `policies.effectivePolicy(vmId)` is what the rest of the site asks. */
    readonly policies: SitePolicies,
  ) {}

  /** Which primaries may replicate here, from the ledger. */
  get authorizations(): SiteAuthorizations {
    return (this.authz ??= new SiteAuthorizations(this.store));
  }

  /** Refused control calls, recorded in the ledger's audit stream. */
  get refusals(): RefusalAudit {
    return (this.audit ??= new RefusalAudit(this.store, this.logger));
  }

  /** One stream per VM: a reconnecting agent's new stream replaces its old, half-dead one. */
  claimSession(vmId: string, session: ReplicateSession): void {
    const previous = this.sessions.get(vmId);
    this.sessions.set(vmId, session);
    if (previous && previous !== session) previous.supersede();
  }

  /** The primary's live Replicate stream for a VM, if its agent is connected. */
  sessionFor(vmId: string): ReplicateSession | undefined {
    return this.sessions.get(vmId);
  }

  /**
   * Tells the primary's agent over its open Replicate stream; false when it is not connected or
   * the notice could not be sent (the command is in the ledger either way: the agent learns it at
   * its next Hello).
   */
  async notifyAgent(vmId: string, notice: AgentNotice): Promise<boolean> {
    const session = this.sessions.get(vmId);
    if (!session) return false;
    try {
      await session.notify(notice);
      return true;
    } catch (err) {
      this.logger.warn({ err, vm: vmId, notice: notice.$case }, "could not notify the primary's agent");
      return false;
    }
  }

  /** VMs whose primary's agent is connected now. */
  connectedVmIds(): string[] {
    return [...this.sessions.keys()];
  }

  /** After a new revocation list: the open streams of peers it lists end now. */
  cutRevokedSessions(): string[] {
    return [...this.sessions.entries()].filter(([, session]) => session.cutIfRevoked()).map(([vmId]) => vmId);
  }

  releaseSession(vmId: string, session: ReplicateSession): void {
    if (this.sessions.get(vmId) === session) this.sessions.delete(vmId);
  }

  stopRetention(): void {
    this.stopping = true;
  }

  /**
   * Retention runs after the ack (and after a discarded cycle), serialized with the VM's cycles
   * one merge at a time: a cycle that arrives meanwhile queues behind at most the merge under way,
   * not all that are due.
   */
  afterCommit(vmId: string): void {
    if (this.stopping) return;
    void this.serializer
      .run(vmId, () => this.relationships.retentionStep(vmId))
      .then((more) => {
        if (more) this.afterCommit(vmId);
      })
      .catch((err: unknown) => this.logger.error({ err, vm: vmId }, "retention merge failed; it is retried after the next cycle"));
  }
}
