import { errorMessage } from "../common/errors.js";
import { approveResync, executeCommand } from "../ledger/index.js";
import { inWindow, nextOpening } from "../policy/windows.js";
import type { ReplicationPolicy } from "../policy/types.js";
import type { SiteContext } from "./siteContext.js";

/**
 * How often the plan of window openings is made again without a policy change: a VM that connects
 * with a held resync has its window's opening timed at the next plan at the latest.
 */
const REPLAN_EVERY_MS = 10 * 60_000;

/**
 * How a VM bound to `policy` resyncs at `now`: a policy's automatic resync with a window is
 * automatic inside the window and waits outside it (Hyper-V's default window is 18:30-06:00).
 */
export function resyncModeAt(policy: ReplicationPolicy, now: Date): "automatic" | "manual" {
  if (policy.resync.mode === "manual") return "manual";
  return !policy.resync.window || inWindow(policy.resync.window, now) ? "automatic" : "manual";
}

/**
 * Starts the resyncs a policy's window held back: when the window opens (a timer at the next
 * opening of the connected VMs' windows, computed by croner from each window's days and start; and
 * at once whenever a VM's effective policy changes), a VM that waits in resync-required with its
 * agent connected gets the go-ahead, recorded in the ledger as the policy's (ResyncApproved,
 * approved by "policy NAME@VERSION"), and its agent is told to resync now.
 */
export class ResyncWindows {
  private timer: NodeJS.Timeout | undefined;
  private replan: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private vmIds: () => string[] = () => [];

  constructor(
    private readonly ctx: SiteContext,
    private readonly now: () => Date = () => new Date(),
  ) {}

  start(vmIds: () => string[]): this {
    this.vmIds = vmIds;
    this.unsubscribe = this.ctx.policies.onPolicyChange((vmId) => {
      void this.check(vmId);
      this.plan();
    });
    this.replan = setInterval(() => this.plan(), REPLAN_EVERY_MS).unref();
    this.plan();
    return this;
  }

  stop(): void {
    clearTimeout(this.timer);
    clearInterval(this.replan);
    this.unsubscribe?.();
  }

  /** The next moment a connected VM's resync window opens, if any. */
  nextOpening(): Date | undefined {
    const now = this.now();
    let next: Date | undefined;
    for (const vmId of this.vmIds()) {
      if (this.ctx.policies.effectivePolicyVersion(vmId).version === 0) continue;
      const resync = this.ctx.policies.effectivePolicy(vmId).resync;
      if (resync.mode !== "automatic" || !resync.window) continue;
      const at = nextOpening(resync.window, now);
      if (at && (!next || at < next)) next = at;
    }
    return next;
  }

  private plan(): void {
    clearTimeout(this.timer);
    const at = this.nextOpening();
    if (!at) return;
    // setTimeout's limit is ~24.8 days; a later opening is planned again by the periodic replan.
    const ms = Math.min(at.getTime() - this.now().getTime() + 1_000, 2 ** 31 - 1);
    this.timer = setTimeout(
      () => {
        for (const vmId of this.vmIds()) void this.check(vmId);
        this.plan();
      },
      Math.max(0, ms),
    ).unref();
  }

  /** Gives the go-ahead when the VM's policy allows a resync now and the VM waits for one; true if it did. */
  async check(vmId: string): Promise<boolean> {
    const { name, version } = this.ctx.policies.effectivePolicyVersion(vmId);
    if (version === 0) return false;
    const policy = this.ctx.policies.effectivePolicy(vmId);
    const session = this.ctx.sessionFor(vmId);
    if (!session || resyncModeAt(policy, this.now()) !== "automatic") return false;
    try {
      return await this.ctx.serializer.run(vmId, async () => {
        const state = await this.ctx.relationships.load(vmId);
        if (state.state !== "resync-required" || state.resyncApproval) return false;
        const by = `policy ${name}@${version}`;
        await executeCommand(this.ctx.store, vmId, (s) => approveResync(s, { approvedBy: by, approvedByRole: "policy" }), { metadata: { actor: by, actorRole: "policy" } });
        await session.notify({ $case: "resyncRequested", requestedBy: by });
        this.ctx.logger.info({ vm: vmId, policy: by }, "resync window open: the waiting resync starts");
        return true;
      });
    } catch (err) {
      this.ctx.logger.warn({ vm: vmId, err: errorMessage(err) }, "could not start the resync the policy's window allows");
      return false;
    }
  }
}
