import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { getSqliteEventStore, RELATIONSHIP_STREAM_PREFIX } from "../../src/ledger/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import type { Daemon } from "../../test/helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../../test/helpers/twoSites.js";
import { Cleanup, killStorageDaemonsUnder } from "./cleanup.js";
import { ensureCompiled } from "./compiled.js";
import { writeMix, type MixData } from "./mixData.js";
import { CpuMeter, memoryKiB } from "./procStats.js";

const MiB = 1024 * 1024;
const VM_ID = "vm1";

/** The data of a CycleCommitted event, as site B's ledger holds it. */
export interface CommittedCycle {
  cycleSeq: number;
  kind: string;
  cutoffAt: string;
  committedAt: string;
  dataBytes: number;
  zeroBytes: number;
  wireBytes: number;
  extents: number;
  durationMs: number;
}

/** One write of the mix into the primary and the cycle that carried it to site B. */
export interface MixRound {
  /** The cycle that carried the mix. */
  cycle: CommittedCycle;
  /** committedAt - cutoffAt of that cycle: from the agent's cut-off to the durable commit on the replica. */
  seconds: number;
  /** The agent's VmHWM / VmRSS (KiB) right after the mix's cycle was committed. */
  peak: { hwm: number; rss: number };
  /** Seconds qemu-io took to write the mix into the primary. */
  writeSeconds: number;
  /** CPU seconds per process from the end of the write to the commit (the agent idles until the cut-off). */
  cpu: string;
  cpuSeconds: number;
  /** The agent's share of cpuSeconds: what the production host pays for the cycle. */
  agentCpuSeconds: number;
  /** Site B's VmHWM / VmRSS (KiB) right after the mix's cycle was committed. */
  sitePeak: { hwm: number; rss: number };
  /** The agent's own figure for the cycle (cycleBegin sent to ack received), if logged. */
  agentCycleMs: number | undefined;
  /**
   * Cycles the replica refused between the previous round and this one (e.g. a checksum
   * mismatch): their changes were kept and carried by the measured cycle, which started only
   * after the refusal.
   */
  failed: FailedCycle[];
}

export interface MixReplication {
  /** The agent's VmHWM / VmRSS (KiB) after the initial replication of the almost empty disk. */
  idle: { hwm: number; rss: number };
  /** Site B's VmHWM / VmRSS (KiB) after the initial replication. */
  siteIdle: { hwm: number; rss: number };
  rounds: MixRound[];
}

export interface FailedCycle {
  cycleSeq: number;
  reason: string;
  message: string;
}

async function cycleEvents(siteB: string): Promise<{ committed: CommittedCycle[]; failed: FailedCycle[] }> {
  const path = join(siteB, "ledger.sqlite");
  if (!existsSync(path)) return { committed: [], failed: [] };
  const store = getSqliteEventStore({ path, create: false });
  try {
    const events = await store.readStream(`${RELATIONSHIP_STREAM_PREFIX}${VM_ID}`);
    return {
      committed: events.filter((e) => e.type === "CycleCommitted").map((e) => e.data as unknown as CommittedCycle),
      failed: events.filter((e) => e.type === "CycleFailed").map((e) => e.data as unknown as FailedCycle),
    };
  } finally {
    await store.close();
  }
}

function logTail(file: string, lines = 15): string {
  try {
    return readFileSync(file, "utf8").trim().split("\n").slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** Waits for a cycle matching `pick` in site B's ledger, failing early if a process died. */
async function waitForCycle(t: TwoSites, daemons: Daemon[], what: string, pick: (c: CommittedCycle) => boolean, timeoutMs: number, pollMs = 100): Promise<CommittedCycle> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = (await cycleEvents(t.siteB)).committed.find(pick);
    if (found) return found;
    const dead = daemons.find((d) => d.child.exitCode !== null || d.child.signalCode !== null);
    if (dead) {
      throw new Error(`a qreplica process exited while waiting for ${what}\nagent log:\n${logTail(join(t.dir, "agent.log"))}\nsite B log:\n${logTail(join(t.siteB, "site.log"))}`);
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs / 1000} s waiting for ${what}\nagent log:\n${logTail(join(t.dir, "agent.log"))}\nsite B log:\n${logTail(join(t.siteB, "site.log"))}`,
      );
    }
    await sleep(pollMs);
  }
}

/** stopAll (SIGTERM, graceful), but a process that does not exit in time gets SIGKILL. */
async function stopWithin(t: TwoSites, ms: number, log: (m: string) => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), ms)));
  const outcome = await Promise.race([t.stopAll().then(() => "stopped" as const), late]);
  clearTimeout(timer);
  if (outcome === "late") {
    log(`cleanup: processes still running ${ms / 1000} s after SIGTERM; sending SIGKILL`);
    for (const d of t.daemons) if (d.child.exitCode === null && d.child.signalCode === null) d.child.kill("SIGKILL");
    await t.vm.proc.kill("SIGKILL");
  }
}

/** The agent's "cycle acknowledged" log lines (pino JSON). */
function agentAcks(dir: string): Array<{ seq: number; ms: number }> {
  const file = join(dir, "agent.log");
  if (!existsSync(file)) return [];
  const out: Array<{ seq: number; ms: number }> = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.includes("cycle acknowledged")) continue;
    try {
      const j = JSON.parse(line) as { seq?: number; ms?: number };
      if (typeof j.seq === "number" && typeof j.ms === "number") out.push({ seq: j.seq, ms: j.ms });
    } catch {
      // not JSON
    }
  }
  return out;
}

/**
 * Real replication of `mix` with separate site and agent processes over mutual TLS, started as
 * installed (the bins over the compiled dist/, built first when stale): site B
 * (replica) and an agent protecting a qemu-storage-daemon VM whose disk holds only 1 MiB. After
 * the initial replication, each round writes the whole mix through the VM's guest export with
 * qemu-io (the same bytes again in later rounds: every block is dirty again), runs
 * `beforeCycle` (e.g. a baseline, while our processes idle) and waits for the cycle carrying the
 * mix. The agent's interval is long enough for the write and `beforeCycle` to finish before the
 * cut-off, which is checked (dataBytes + zeroBytes must equal the mix size). Everything is torn
 * down afterwards, also on failure; `dir` itself is the caller's to remove.
 */
export async function replicateMix(opts: {
  dir: string;
  mix: MixData;
  log: (m: string) => void;
  rounds?: number;
  /** Runs once the CA, certificates and VM exist, before any site or agent process starts. */
  afterSetup?: (t: TwoSites) => Promise<void>;
  /** The address the agent dials instead of site B's (e.g. a delaying proxy in front of it), given B's. */
  agentDials?: (siteAddress: string) => Promise<string>;
  /**
   * Runs in each round between the write and the cut-off; counts against the agent's interval.
   * A round that is run again calls it again with the same number: keep one result per number.
   */
  beforeCycle?: (round: number) => Promise<void>;
}): Promise<MixReplication> {
  const { mix, log } = opts;
  const rounds = opts.rounds ?? 1;
  const cleanup = new Cleanup(log);
  cleanup.defer("kill orphaned storage daemons", () => killStorageDaemonsUnder(opts.dir, log));
  try {
    // qemu-io wrote ~100 MiB/s into a fresh primary on a busy 2-core box; assume 40 MiB/s, and
    // as long again for whatever runs before the cycle.
    const sizeMiB = mix.totalBytes / MiB;
    const intervalSeconds = Math.max(20, Math.ceil(sizeMiB / 40) * (opts.beforeCycle ? 2 : 1) + 10);
    const sitesDir = join(opts.dir, "sites");
    mkdirSync(sitesDir);
    // The installed form (bins over dist/, their node flags): what a production host runs.
    ensureCompiled(log);
    const t = await setupTwoSites(sitesDir, { diskBytes: mix.totalBytes + 64 * MiB, intervalSeconds, maxPoints: 100, compiled: true });
    cleanup.defer("stop sites, agent and VM", () => stopWithin(t, 30_000, log));
    await opts.afterSetup?.(t);
    // Almost empty: 1 MiB beyond where the mix goes.
    await t.vm.guestWrite("vda", [`write -q -P 0x42 ${mix.totalBytes + 16 * MiB} 1M`]);
    const siteB = await t.startSite(t.siteB);
    const siteAddress = readFileSync(addressFile(t.siteB), "utf8").trim();
    const agent = t.startAgent(opts.agentDials ? { replicaSite: await opts.agentDials(siteAddress) } : {});
    const daemons = [siteB, agent];
    const agentPid = agent.child.pid!;
    log(`agent pid ${agentPid}, interval ${intervalSeconds} s; waiting for the initial replication`);
    const initial = await waitForCycle(t, daemons, "the initial replication", (c) => c.kind === "full", 120_000);
    // The agent confirms (tears down its fleece) after the ack: wait for its log line.
    const ackDeadline = Date.now() + 30_000;
    while (!agentAcks(t.dir).some((a) => a.seq === initial.cycleSeq) && Date.now() < ackDeadline) await sleep(50);
    const idle = memoryKiB(agentPid);
    const siteIdle = memoryKiB(siteB.child.pid!);
    log(`initial replication committed (cycle ${initial.cycleSeq}); agent VmHWM ${(idle.hwm / 1024).toFixed(1)} MiB, VmRSS ${(idle.rss / 1024).toFixed(1)} MiB`);

    const siteQsdPidFile = join(t.siteB, "run", "storage-daemon.pid");
    const results: MixRound[] = [];
    let previous = initial.cycleSeq;
    // A round whose cycle was cut off before the measurement window opened (during the write or
    // beforeCycle: a busy machine made them outlast the time left before the agent's next slot)
    // measured the wrong thing; it is not counted and the round is run again, a few times at most.
    let retriesLeft = 3;
    for (let round = 1; round <= rounds; ) {
      const writeStarted = Date.now();
      await writeMix(t.vm.guestUri("vda"), mix, { format: "raw" });
      const writeSeconds = (Date.now() - writeStarted) / 1000;
      log(`round ${round}: wrote ${sizeMiB.toFixed(0)} MiB of the mix into the primary in ${writeSeconds.toFixed(1)} s`);
      await opts.beforeCycle?.(round);
      const windowOpened = Date.now();
      const meter = new CpuMeter({
        agent: agentPid,
        "site B": siteB.child.pid,
        "site B qemu-storage-daemon": existsSync(siteQsdPidFile) ? Number(readFileSync(siteQsdPidFile, "utf8").trim()) : undefined,
        "primary qemu-storage-daemon": t.vm.proc.pid,
      });
      // A refused cycle is retried an interval later: leave room for a few. Polling is slow on
      // purpose: the figure comes from the ledger's timestamps and VmHWM is monotonic, so a late
      // look changes neither, while a busy poller would take CPU from the processes measured.
      const after = previous;
      const cycle = await waitForCycle(t, daemons, `the cycle carrying round ${round}'s mix`, (c) => c.cycleSeq > after, (4 * intervalSeconds + 600) * 1000, 500);
      const peak = memoryKiB(agentPid);
      const sitePeak = memoryKiB(siteB.child.pid!);
      const cpu = meter.report();
      const cpuSeconds = meter.total();
      const agentCpuSeconds = meter.of("agent");
      const carried = cycle.dataBytes + cycle.zeroBytes;
      const early = Date.parse(cycle.cutoffAt) < windowOpened;
      if (carried !== mix.totalBytes || early) {
        const why = `cycle ${cycle.cycleSeq} carried ${carried} bytes of the mix's ${mix.totalBytes}${early ? ", cut off before the write and what runs before the cycle were done" : ""}: they straddled a cut-off (write ${writeSeconds.toFixed(1)} s, interval ${intervalSeconds} s)`;
        if (retriesLeft-- <= 0) throw new Error(why);
        log(`round ${round} not counted, run again: ${why}`);
        previous = cycle.cycleSeq;
        continue;
      }
      const seconds = (Date.parse(cycle.committedAt) - Date.parse(cycle.cutoffAt)) / 1000;
      const failed = (await cycleEvents(t.siteB)).failed.filter((f) => f.cycleSeq > after && f.cycleSeq < cycle.cycleSeq);
      for (const f of failed) log(`WARNING: the replica refused cycle ${f.cycleSeq} (${f.reason}): ${f.message}`);
      // The agent logs its ack right after the site's commit; give it a moment.
      const ackBy = Date.now() + 5_000;
      while (!agentAcks(t.dir).some((a) => a.seq === cycle.cycleSeq) && Date.now() < ackBy) await sleep(100);
      const agentCycleMs = agentAcks(t.dir).find((a) => a.seq === cycle.cycleSeq)?.ms;
      results.push({ cycle, seconds, peak, sitePeak, writeSeconds, cpu, cpuSeconds, agentCpuSeconds, agentCycleMs, failed });
      previous = cycle.cycleSeq;
      round++;
    }
    return { idle, siteIdle, rounds: results };
  } finally {
    await cleanup.runAll();
  }
}

/** For a result's description: refused cycles are worth a reader's attention. */
export function refusals(failed: FailedCycle[]): string {
  if (failed.length === 0) return "";
  return `; NOTE: ${failed.length} earlier cycle(s) refused by the replica (${[...new Set(failed.map((f) => f.reason))].join(", ")}), measured cycle is the retry`;
}
