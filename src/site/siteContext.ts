import type { Logger } from "../common/logger.js";
import type { EventStore } from "../ledger/index.js";
import type { ReplicaStorage } from "../storage/index.js";
import type { ReplicateSession } from "./dataPlane/replicateSession.js";
import type { Relationships } from "./relationships.js";
import type { FailoverService } from "./failover/failoverService.js";
import { VmSerializer } from "./vmSerializer.js";
import { SiteAuthorizations } from "./authorizations.js";
import { RefusalAudit } from "./controlPlane/refusalAudit.js";
import type { SitePolicies } from "./sitePolicies.js";

/** What every request handler of a running site shares. */
export class SiteContext {
  readonly serializer = new VmSerializer();
  private readonly sessions = new Map<string, ReplicateSession>();
  private authz: SiteAuthorizations | undefined;
  private audit: RefusalAudit | undefined;

  constructor(
    readonly siteId: string,
    readonly dir: string,
    readonly store: EventStore,
    readonly storage: ReplicaStorage,
    readonly relationships: Relationships,
    readonly failovers: FailoverService,
    readonly logger: Logger,
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

  /** VMs whose primary's agent is connected now. */
  connectedVmIds(): string[] {
    return [...this.sessions.keys()];
  }

  releaseSession(vmId: string, session: ReplicateSession): void {
    if (this.sessions.get(vmId) === session) this.sessions.delete(vmId);
  }

  /** Retention runs after the ack, serialized with the VM's next cycle. */
  afterCommit(vmId: string): void {
    void this.serializer.run(vmId, () => this.relationships.applyRetention(vmId)).catch((err: unknown) =>
      this.logger.error({ err, vm: vmId }, "retention merge failed; it is retried after the next cycle"),
    );
  }
}
