/**
 * The ledger as it ages (issue 9, deliverable 6): appends against raw SQLite, rebuilding every
 * read model from 100,000 events, and one control command on a relationship 1,000 times older
 * than another. Real SQLite files (WAL, synchronous=FULL), rounds interleaved, medians reported:
 * the machine is shared and single runs swing.
 */
import { join } from "node:path";
import type Database from "better-sqlite3";
import { makeTmpDir } from "../src/common/tmpDir.js";
import {
  executeCommand,
  getSqliteEventStore,
  initialRelationshipState,
  loadRelationship,
  pause,
  rebuildReadModels,
  relationshipStream,
  resume,
  type NewEvent,
  type SqliteEventStore,
} from "../src/ledger/index.js";
import { openLedgerDatabase } from "../src/ledger/sqlite/schema.js";
import { sqliteDatabaseOf } from "../src/ledger/sqlite/sqliteEventStore.js";
import { appendHistory, relationshipHistory } from "../test/helpers/ledgerHistory.js";
import { median } from "./lib/stats.js";
import type { BenchContext, BenchResult } from "./report.js";

const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

interface RawRow {
  stream_id: string;
  stream_version: bigint;
  type: string;
  data: string;
  metadata: string;
  recorded_at: string;
  hash: string;
  previous_hash: string;
}

/**
 * ledger-append: events/s through the SQLite adapter (validation, canonical JSON, hash chain,
 * head lookup, expected-version check), two events per append as a committed cycle records,
 * beside plain better-sqlite3 INSERTs of the very rows the adapter stored, one transaction per
 * pair, into the same schema on the same disk.
 */
export async function ledgerAppend(ctx: BenchContext): Promise<BenchResult[]> {
  // 1,000 events per round: each append is an fsync (synchronous=FULL), 1-3 ms on a busy disk.
  const appends = ctx.quick ? 200 : 500;
  const rounds = ctx.quick ? 5 : 11;
  const tmp = makeTmpDir("qr-bench-ledger-");
  try {
    const events = relationshipHistory("bench", appends * 2).events.slice(0, appends * 2);
    const runAdapter = async (path: string): Promise<number> => {
      const store = getSqliteEventStore({ path });
      const stream = relationshipStream("bench");
      let version: bigint | "no_stream" = "no_stream";
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < events.length; i += 2) version = (await store.append(stream, events.slice(i, i + 2), version)).nextExpectedVersion;
      const took = ms(t0);
      await store.close();
      return (events.length / took) * 1000;
    };
    // The rows to insert raw: exactly what the adapter stores for these events.
    const reference = join(tmp.path, "reference.sqlite");
    await runAdapter(reference);
    const refDb = openLedgerDatabase(reference);
    const rows = refDb.prepare("SELECT stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash FROM events ORDER BY global_position").all() as RawRow[];
    refDb.close();
    const runRaw = (path: string): number => {
      const db: Database.Database = openLedgerDatabase(path);
      const insert = db.prepare("INSERT INTO events (stream_id, stream_version, type, data, metadata, recorded_at, hash, previous_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
      const pair = db.transaction((a: RawRow, b: RawRow | undefined) => {
        for (const r of b ? [a, b] : [a]) insert.run(r.stream_id, r.stream_version, r.type, r.data, r.metadata, r.recorded_at, r.hash, r.previous_hash);
      });
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < rows.length; i += 2) pair.immediate(rows[i]!, rows[i + 1]);
      const took = ms(t0);
      db.close();
      return (rows.length / took) * 1000;
    };
    const ours: number[] = [];
    const raw: number[] = [];
    for (let i = 0; i < rounds; i++) {
      // Alternating who goes first: neither always runs on the warmer or the busier machine.
      if (i % 2 === 0) {
        ours.push(await runAdapter(join(tmp.path, `a${i}.sqlite`)));
        raw.push(runRaw(join(tmp.path, `r${i}.sqlite`)));
      } else {
        raw.push(runRaw(join(tmp.path, `r${i}.sqlite`)));
        ours.push(await runAdapter(join(tmp.path, `a${i}.sqlite`)));
      }
      ctx.log(`round ${i + 1}: adapter ${ours[i]!.toFixed(0)} events/s, raw ${raw[i]!.toFixed(0)} events/s`);
    }
    return [
      {
        name: "ledger-append",
        description: `events/s through the SQLite adapter with its hash chain (${events.length} events, 2 per append, synchronous=FULL, ${rounds} interleaved rounds: ${ours.map((v) => v.toFixed(0)).join(", ")})`,
        value: median(ours),
        unit: "events/s",
        baseline: median(raw),
        baselineDescription: `raw better-sqlite3 INSERTs of the same rows, same schema, one transaction per pair (${raw.map((v) => v.toFixed(0)).join(", ")})`,
        ratio: median(ours.map((v, i) => v / raw[i]!)),
      },
    ];
  } finally {
    tmp.cleanup();
  }
}

/** A SQLite ledger holding `vms` relationships of `perVm` events each, written in batches. */
async function agedLedger(path: string, histories: Array<{ vmId: string; events: NewEvent[] }>): Promise<SqliteEventStore> {
  const store = getSqliteEventStore({ path });
  for (const h of histories) await appendHistory(store, h.vmId, h.events, 5000);
  return store;
}

/**
 * projection-rebuild: `qreplica ledger rebuild`'s work (every read model and relationship
 * snapshot folded from the first event, and stored) over 100,000 events in 10 relationships,
 * beside merely reading those events from the same store.
 */
export async function projectionRebuild(ctx: BenchContext): Promise<BenchResult[]> {
  const total = ctx.quick ? 20_000 : 100_000;
  const vms = 10;
  const rounds = 5;
  const tmp = makeTmpDir("qr-bench-ledger-");
  try {
    ctx.log(`writing ${total} events in ${vms} relationships`);
    const histories = Array.from({ length: vms }, (_, i) => ({ vmId: `vm${i}`, events: relationshipHistory(`vm${i}`, total / vms).events.slice(0, total / vms) }));
    const store = await agedLedger(join(tmp.path, "ledger.sqlite"), histories);
    const rebuilds: number[] = [];
    const reads: number[] = [];
    const cpu: number[] = [];
    try {
      for (let i = 0; i < rounds; i++) {
        let t0 = process.hrtime.bigint();
        const cpu0 = process.cpuUsage();
        const report = await rebuildReadModels(store);
        rebuilds.push(ms(t0));
        const used = process.cpuUsage(cpu0);
        // CPU time beside wall time: on a shared machine the wall time also measures the neighbours.
        cpu.push((used.user + used.system) / 1000);
        if (report.events !== total) throw new Error(`rebuild folded ${report.events} events, expected ${total}`);
        t0 = process.hrtime.bigint();
        let n = 0;
        for (let from = 0n; ; ) {
          const page = await store.readAll({ fromPosition: from, maxCount: 10_000 });
          n += page.length;
          if (page.length < 10_000) break;
          from = page.at(-1)!.globalPosition;
        }
        reads.push(ms(t0));
        if (n !== total) throw new Error(`read ${n} events, expected ${total}`);
        ctx.log(`round ${i + 1}: rebuild ${rebuilds[i]!.toFixed(0)} ms (CPU ${cpu[i]!.toFixed(0)} ms), read only ${reads[i]!.toFixed(0)} ms`);
      }
    } finally {
      await store.close();
    }
    return [
      {
        name: "projection-rebuild",
        description: `every read model and relationship snapshot folded from ${total} events (${vms} relationships) and stored, SQLite (${rounds} rounds: ${rebuilds.map((v) => v.toFixed(0)).join(", ")} ms wall; CPU ${cpu.map((v) => v.toFixed(0)).join(", ")} ms)`,
        value: median(rebuilds) / 1000,
        unit: "s",
        baseline: median(reads) / 1000,
        baselineDescription: `reading the same events only (${reads.map((v) => v.toFixed(0)).join(", ")} ms)`,
        ratio: median(rebuilds.map((v, i) => v / reads[i]!)),
        goal: "value < 2 s",
      },
    ];
  } finally {
    tmp.cleanup();
  }
}

/**
 * command-at-age: a pause and a resume through the command handler on a relationship with
 * 100,000 events against one with 100, in one SQLite file. Warm: the site's process as it runs
 * (folds kept in memory). Cold: right after the site started (a new store: snapshot + tail).
 */
export async function commandAtAge(ctx: BenchContext): Promise<BenchResult[]> {
  const oldEvents = ctx.quick ? 20_000 : 100_000;
  const rounds = ctx.quick ? 7 : 21;
  const tmp = makeTmpDir("qr-bench-ledger-");
  const path = join(tmp.path, "ledger.sqlite");
  try {
    ctx.log(`writing a relationship of ${oldEvents} events and one of 100`);
    const old = relationshipHistory("old", oldEvents).events.slice(0, oldEvents);
    const young = relationshipHistory("young", 100).events.slice(0, 100);
    let store = await agedLedger(path, [
      { vmId: "old", events: old },
      { vmId: "young", events: young },
    ]);
    const t0 = process.hrtime.bigint();
    await loadRelationship(store, "old", { state: initialRelationshipState("old"), version: undefined });
    ctx.log(`for comparison, a fold from version 0 of the old stream (what every command did before): ${ms(t0).toFixed(0)} ms`);
    // First loads: fold once, write the snapshots.
    await loadRelationship(store, "old");
    await loadRelationship(store, "young");

    const command = async (vmId: string): Promise<number> => {
      const t = process.hrtime.bigint();
      await executeCommand(store, vmId, (s) => pause(s, { reason: "bench" }));
      await executeCommand(store, vmId, (s) => resume(s));
      return ms(t);
    };
    const warm = { old: [] as number[], young: [] as number[] };
    const cold = { old: [] as number[], young: [] as number[] };
    for (let i = 0; i < rounds; i++) {
      const order = i % 2 === 0 ? (["old", "young"] as const) : (["young", "old"] as const);
      for (const vm of order) warm[vm].push(await command(vm));
      for (const vm of order) {
        // A restarted site: a new store on the same file, nothing folded in memory.
        await store.close();
        store = getSqliteEventStore({ path });
        cold[vm].push(await command(vm));
      }
    }
    const stored = sqliteDatabaseOf(store)!.prepare("SELECT count(*) AS n FROM events WHERE stream_id = ?").get(relationshipStream("old")) as { n: bigint };
    await store.close();
    ctx.log(`old stream at the end: ${stored.n} events`);
    const result = (name: string, what: string, r: { old: number[]; young: number[] }): BenchResult => ({
      name,
      description: `pause + resume through the command handler on a relationship of ${oldEvents} events, ${what} (${rounds} interleaved rounds, median ms)`,
      value: median(r.old),
      unit: "ms",
      baseline: median(r.young),
      baselineDescription: "the same on a relationship of 100 events",
      ratio: median(r.old.map((v, i) => v / r.young[i]!)),
      goal: "ratio <= 1.5",
    });
    return [result("command-at-age", "site running", warm), result("command-at-age-cold", "first command after a restart (snapshot + tail)", cold)];
  } finally {
    tmp.cleanup();
  }
}
