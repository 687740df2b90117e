import { readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { waitFor } from "../helpers/processes.js";
import { ledgerEvents } from "../helpers/resyncChecks.js";
import { fill, unfill, type Campaign } from "./campaignFixture.js";
import type { InvariantChecker } from "./invariants.js";
import type { PrimaryModel } from "./primaryModel.js";
import type { Rng } from "./rng.js";

export const FAULT_KINDS = [
  "kill-agent",
  "kill-site",
  "kill-primary-qemu",
  "kill-replica-storage-daemon",
  "link-cut",
  "link-stall",
  "link-half-open",
  "link-throttle",
  "link-reset",
  "replica-storage-full",
  "primary-scratch-full",
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** Relative odds in the random part of a schedule: a half-open link costs a keepalive timeout (~30 s). */
export const FAULT_WEIGHT: Record<FaultKind, number> = Object.fromEntries(FAULT_KINDS.map((k) => [k, k === "link-half-open" ? 0.25 : 1])) as Record<FaultKind, number>;

/** How long the system may take to commit a point equal to the primary after the fault is healed. */
export const RECOVERY_BOUND_MS: Record<FaultKind, number> = Object.fromEntries(FAULT_KINDS.map((k) => [k, k === "link-half-open" ? 90_000 : 60_000])) as Record<FaultKind, number>;

export interface FaultContext {
  c: Campaign;
  model: PrimaryModel;
  rng: Rng;
  checker: InvariantChecker;
}

export interface Injected {
  detail: string;
  /** What the system told the operator while the fault lasted (asserted where one is expected). */
  operatorMessage?: string;
}

/** What `qreplica site serve` exits with when it stopped itself (src/cli/commands/site.ts). */
const SITE_FAILED_EXIT = 70;

const pause = (rng: Rng, minMs: number, maxMs: number) => sleep(rng.int(minMs, maxMs));

async function eventsAfter(c: Campaign, from: number) {
  return (await ledgerEvents(c.t.siteB)).slice(from);
}

function siteStorageDaemonPid(c: Campaign): number {
  return Number(readFileSync(join(c.t.siteB, "run", "storage-daemon.pid"), "utf8").trim());
}

const injectors: Record<FaultKind, (x: FaultContext) => Promise<Injected>> = {
  async "kill-agent"({ c, rng }) {
    await c.agent.kill("SIGKILL");
    await pause(rng, 0, 1500);
    c.startAgent();
    return { detail: "agent killed with SIGKILL and started again" };
  },

  async "kill-site"({ c, rng }) {
    await c.site.kill("SIGKILL");
    await pause(rng, 0, 1500);
    await c.startSite();
    return { detail: "site B killed with SIGKILL and started again" };
  },

  async "kill-primary-qemu"({ c, rng, model }) {
    await c.t.vm.proc.kill("SIGKILL");
    // Writes fail while the primary is down (a crashed host loses them too); the disk is read back.
    await model.pause();
    await pause(rng, 0, 1500);
    await c.t.vm.restart();
    await model.reloadFromDisk();
    return { detail: "the primary's QEMU killed with SIGKILL and started again on its disk" };
  },

  async "kill-replica-storage-daemon"({ c, checker }) {
    const pid = siteStorageDaemonPid(c);
    process.kill(pid, "SIGKILL");
    // The site cannot write a point without its storage daemon: it stops (exit 70) with a message,
    // and its service manager (here the campaign) starts it again.
    const exit = await Promise.race([c.site.exited, sleep(30_000).then(() => "still running" as const)]);
    if (exit === "still running") {
      checker.violation(`the site did not stop within 30 s of its storage daemon (pid ${pid}) being killed`);
      await c.site.kill("SIGKILL");
    } else if (exit !== SITE_FAILED_EXIT) {
      checker.violation(`the site exited with ${exit} after its storage daemon was killed, not ${SITE_FAILED_EXIT}`);
    }
    const fatal = readFileSync(c.siteLog, "utf8")
      .split("\n")
      .reverse()
      .find((l) => l.includes("STORAGE_DAEMON_EXITED") && l.includes(`pid ${pid}`));
    await c.startSite();
    return {
      detail: `site B's qemu-storage-daemon (pid ${pid}) killed with SIGKILL; the site stopped, restarted`,
      operatorMessage: fatal ? (JSON.parse(fatal) as { msg: string }).msg : undefined,
    };
  },

  async "link-cut"({ c, rng }) {
    c.proxy.cut();
    await pause(rng, 500, 3000);
    c.proxy.heal();
    return { detail: "agent-site link cut (connections closed, new ones refused), then healed" };
  },

  async "link-stall"({ c, rng }) {
    c.proxy.stall();
    await pause(rng, 1000, 4000);
    c.proxy.heal();
    return { detail: "agent-site link stalled (nothing forwarded, nothing closed), then resumed" };
  },

  async "link-half-open"({ c, rng }) {
    const open = c.proxy.connections;
    c.proxy.blackhole();
    await pause(rng, 1000, 3000);
    c.proxy.heal();
    return { detail: `agent-site link half-open: ${open} open connection(s) swallow everything for good; new ones work after the fault` };
  },

  async "link-throttle"({ c, rng, model }) {
    const bps = rng.pick([64, 256, 1024]) * 1024;
    c.proxy.throttle(bps);
    await model.write("big").catch(() => undefined);
    await pause(rng, 2000, 5000);
    c.proxy.heal();
    return { detail: `agent-site link throttled to ${bps / 1024} KiB/s during a big write, then healed` };
  },

  async "link-reset"({ c, model }) {
    const before = c.proxy.forwardedBytes;
    const writing = model.write("big").catch(() => undefined);
    // Mid-stream: once the big write's cycle is on the wire.
    await waitFor("bytes flowing to the site", () => (c.proxy.forwardedBytes - before > 256 * 1024 ? true : undefined), 8_000, 5).catch(() => undefined);
    const n = c.proxy.reset();
    await writing;
    return { detail: `agent-site link reset (TCP RST) mid-stream on ${n} connection(s)` };
  },

  async "replica-storage-full"({ c, model, rng }) {
    const from = (await ledgerEvents(c.t.siteB)).length;
    // 64 KiB: the next overlay cannot even be created; 1 MiB: it is, and the big write fills it mid-cycle.
    const leave = rng.pick([64 * 1024, 1024 * 1024]);
    const fillers = [fill(c.storageDir, leave)];
    let message: string | undefined;
    try {
      await model.write("big").catch(() => undefined);
      // Retention frees the overlays it merges away: topped up until a cycle finds no room.
      const failed = await waitFor(
        "a cycle failing for the replica's full storage",
        async () => {
          const e = (await eventsAfter(c, from)).find((x) => x.type === "CycleFailed");
          if (!e) fillers.push(fill(c.storageDir, leave, fillers.length));
          return e;
        },
        30_000,
        500,
      ).catch(() => undefined);
      message = failed ? (failed.data as { message: string }).message : undefined;
    } finally {
      for (const f of fillers) unfill(f);
    }
    return { detail: `site B's storage file system filled up (${leave / 1024} KiB left) during cycles, then freed`, operatorMessage: message };
  },

  async "primary-scratch-full"({ c }) {
    const from = (await ledgerEvents(c.t.siteB)).length;
    // Below the agent's 8 MiB minimum: cut-offs are skipped and the site told why.
    const filler = fill(c.scratchDir, 2 * 1024 * 1024);
    let message: string | undefined;
    try {
      const skipped = await waitFor(
        "a cycle skipped for the primary's full scratch",
        async () => (await eventsAfter(c, from)).find((e) => e.type === "CycleSkipped"),
        // A cycle already cut runs on (its copies already taken); the next cut-off is the one skipped,
        // which on a loaded machine came after 30 s once (the 500-fault run, fault 132).
        60_000,
      ).catch(() => undefined);
      message = skipped ? `${(skipped.data as { code: string }).code}: ${(skipped.data as { message: string }).message}` : undefined;
    } finally {
      unfill(filler);
    }
    return { detail: "the agent's scratch file system filled up, then freed", operatorMessage: message };
  },
};

/** What the operator must be told, per kind that cannot heal without someone (or a supervisor) acting. */
export const EXPECTED_MESSAGE: Partial<Record<FaultKind, RegExp>> = {
  "kill-replica-storage-daemon": /qemu-storage-daemon \(pid \d+\) exited .*`qreplica site serve --dir /,
  "replica-storage-full": /is full \(ENOSPC\); free space there|No space left on device/,
  "primary-scratch-full": /^SCRATCH_SPACE_LOW: .*scratch directory/,
};

export function inject(kind: FaultKind, x: FaultContext): Promise<Injected> {
  return injectors[kind](x);
}
