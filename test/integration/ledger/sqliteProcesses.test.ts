/**
 * Behaviour that needs more than one process: durability across SIGKILL, writers in several
 * processes, and a subscription seeing another process's appends.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";
import { getSqliteEventStore, verifyLedger } from "../../../src/ledger/index.js";
import { waitFor } from "../../unit/ledger/eventStoreContract.js";

const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const childScript = fileURLToPath(new URL("./fixtures/ledgerChild.ts", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "qreplica-ledger-proc-"));
let n = 0;
const freshPath = () => join(dir, `ledger-${++n}.db`);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

interface Child {
  proc: ChildProcess;
  lines: string[];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>;
}

function runChild(args: string[]): Child {
  const proc = spawn(process.execPath, ["--import", "tsx", childScript, ...args], {
    cwd: repoRoot,
    stdio: ["pipe", "pipe", "pipe"],
  });
  const lines: string[] = [];
  let partial = "";
  let stderr = "";
  proc.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
    const parts = (partial + chunk).split("\n");
    partial = parts.pop()!;
    lines.push(...parts);
  });
  proc.stderr!.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    proc.on("exit", (code, signal) => resolve({ code, signal, stderr })),
  );
  return { proc, lines, exit };
}

describe("SQLite ledger across processes", () => {
  it("keeps every acknowledged append when the writer SIGKILLs itself right after the last one resolves", async () => {
    const path = freshPath();
    const child = runChild(["append", path, "replication-vm1", "200", "selfkill"]);
    const { signal, stderr } = await child.exit;
    expect(stderr).toBe("");
    expect(signal).toBe("SIGKILL");
    expect(child.lines).toHaveLength(200);

    const store = getSqliteEventStore({ path });
    const events = await store.readStream("replication-vm1");
    expect(events.map((e) => e.data.i)).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect((await verifyLedger(store)).ok).toBe(true);
    await store.close();
  });

  it("keeps every acknowledged append when the writer is SIGKILLed mid-stream", async () => {
    const path = freshPath();
    const child = runChild(["append", path, "replication-vm2", "forever"]);
    await waitFor(() => child.lines.length >= 300, "300 acknowledgements", 60_000);
    child.proc.kill("SIGKILL");
    await child.exit;
    const acked = child.lines.filter((l) => l.startsWith("ack ")).length;

    const store = getSqliteEventStore({ path });
    const events = await store.readStream("replication-vm2");
    // Appends committed but not yet acknowledged may exist too; acknowledged ones must all be there.
    expect(events.length).toBeGreaterThanOrEqual(acked);
    expect(events.slice(0, acked).map((e) => e.data.i)).toEqual(Array.from({ length: acked }, (_, i) => i));
    expect((await verifyLedger(store)).ok).toBe(true);
    await store.close();
  });

  it("serialises writers in several processes: no lost or duplicated versions", async () => {
    const path = freshPath();
    await getSqliteEventStore({ path }).close(); // create the file once so the workers race on appends only
    const names = ["w1", "w2", "w3"];
    const workers = names.map((w) => runChild(["contend", path, "site-shared", "150", w]));
    await waitFor(() => workers.every((w) => w.lines.includes("ready")), "workers ready", 60_000);
    for (const w of workers) w.proc.stdin!.end("go\n");
    const exits = await Promise.all(workers.map((w) => w.exit));
    for (const e of exits) expect(e).toMatchObject({ code: 0, stderr: "" });
    const conflicts = workers.map((w) => (JSON.parse(w.lines.at(-1)!) as { conflicts: number }).conflicts);
    // Without conflicts the workers did not actually overlap and the test proved nothing.
    expect(conflicts.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);

    const store = getSqliteEventStore({ path });
    const events = await store.readStream("site-shared");
    expect(events.map((e) => e.version)).toEqual(Array.from({ length: 450 }, (_, i) => BigInt(i)));
    for (const w of names) expect(events.filter((e) => e.data.worker === w)).toHaveLength(150);
    expect((await verifyLedger(store)).ok).toBe(true);
    await store.close();
  });

  it("delivers another process's appends to a live subscription by polling", async () => {
    const path = freshPath();
    const store = getSqliteEventStore({ path, pollIntervalMs: 50 });
    const seen: bigint[] = [];
    const sub = store.subscribe({}, (e) => void seen.push(e.version));
    await sub.caughtUp;
    const child = runChild(["append", path, "runbook-1", "25"]);
    expect((await child.exit).code).toBe(0);
    await waitFor(() => seen.length >= 25, "events from the other process");
    await sub.close();
    expect(seen).toEqual(Array.from({ length: 25 }, (_, i) => BigInt(i)));
    await store.close();
  });
});
