/**
 * The executable definition of the EventStore port. Every adapter runs this same suite; a
 * behaviour that is not pinned down here is not part of the contract.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  GENESIS_HASH,
  LedgerArgumentError,
  LedgerClosedError,
  WrongExpectedVersionError,
  computeEventHash,
  isWrongExpectedVersionError,
  openSnapshot,
  sealSnapshot,
  verifyLedger,
  type EventStore,
  type ExpectedVersion,
  type NewEvent,
  type RecordedEvent,
} from "../../../src/ledger/index.js";

export type EventStoreFactory = () => EventStore | Promise<EventStore>;

const ev = (type: string, data: Record<string, unknown> = {}): NewEvent => ({ type, data });

export async function waitFor(cond: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function conflictOf(p: Promise<unknown>): Promise<WrongExpectedVersionError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WrongExpectedVersionError);
  return err as WrongExpectedVersionError;
}

export function eventStoreContract(name: string, factory: EventStoreFactory): void {
  describe(`EventStore contract: ${name}`, () => {
    let store: EventStore;
    beforeEach(async () => {
      store = await factory();
    });
    afterEach(async () => {
      await store.close();
    });

    describe("append", () => {
      it("creates a stream with no_stream and numbers events from 0n", async () => {
        const r = await store.append("replication-vm1", [ev("A"), ev("B")], "no_stream");
        expect(r.nextExpectedVersion).toBe(1n);
        const events = await store.readStream("replication-vm1");
        expect(events.map((e) => [e.version, e.type])).toEqual([
          [0n, "A"],
          [1n, "B"],
        ]);
        expect(r.lastGlobalPosition).toBe(events[1]!.globalPosition);
        expect(await store.streamVersion("replication-vm1")).toBe(1n);
        expect(await store.streamVersion("replication-none")).toBeUndefined();
      });

      it("continues a stream from the version returned by the previous append", async () => {
        const first = await store.append("s", [ev("A")], "no_stream");
        const second = await store.append("s", [ev("B"), ev("C")], first.nextExpectedVersion);
        expect(second.nextExpectedVersion).toBe(2n);
        await store.append("s", [ev("D")], "stream_exists");
        await store.append("s", [ev("E")], "any");
        await store.append("other", [ev("F")], "any");
        expect(await store.streamVersion("s")).toBe(4n);
        expect(await store.streamVersion("other")).toBe(0n);
      });

      it.each<[string, ExpectedVersion, boolean, bigint | "no_stream"]>([
        ["no_stream on an existing stream", "no_stream", true, 1n],
        ["stream_exists on a missing stream", "stream_exists", false, "no_stream"],
        ["a stale version", 0n, true, 1n],
        ["a version ahead of the stream", 5n, true, 1n],
        ["a version on a missing stream", 0n, false, "no_stream"],
      ])("refuses %s with WrongExpectedVersionError", async (_label, expected, exists, actual) => {
        if (exists) await store.append("vm-7", [ev("A"), ev("B")], "no_stream");
        const before = await store.readAll();
        const err = await conflictOf(store.append("vm-7", [ev("X")], expected));
        expect(err.code).toBe("WRONG_EXPECTED_VERSION");
        expect(err.stream).toBe("vm-7");
        expect(err.expected).toBe(expected);
        expect(err.actual).toBe(actual);
        expect(err.message).toContain('reload stream "vm-7"');
        expect(isWrongExpectedVersionError(err)).toBe(true);
        expect(await store.readAll()).toEqual(before);
      });

      it("lets exactly one of several concurrent appends with the same expected version win", async () => {
        await store.append("race", [ev("Start")], "no_stream");
        const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => store.append("race", [ev(`Attempt${i}`), ev("Second")], 0n)));
        expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
        for (const r of results) {
          if (r.status === "rejected") expect(r.reason).toBeInstanceOf(WrongExpectedVersionError);
        }
        const events = await store.readStream("race");
        expect(events.map((e) => e.version)).toEqual([0n, 1n, 2n]);

        const creations = await Promise.allSettled([1, 2, 3].map(() => store.append("fresh", [ev("Created")], "no_stream")));
        expect(creations.filter((r) => r.status === "fulfilled")).toHaveLength(1);
      });

      it("is atomic: an invalid event anywhere in the batch stores nothing", async () => {
        const bad = [ev("Ok"), { type: "Bad", data: { size: 10n } as Record<string, unknown> }];
        await expect(store.append("atomic", bad, "no_stream")).rejects.toBeInstanceOf(LedgerArgumentError);
        expect(await store.readStream("atomic")).toEqual([]);
        expect(await store.readAll()).toEqual([]);
      });

      it("refuses arguments it cannot store", async () => {
        const refuse = (p: Promise<unknown>) => expect(p).rejects.toBeInstanceOf(LedgerArgumentError);
        await refuse(store.append("s", [], "any"));
        await refuse(store.append("", [ev("A")], "any"));
        await refuse(store.append("s", [ev("")], "any"));
        await refuse(store.append("s", [ev("A")], -1n));
        await refuse(store.append("s", [ev("A", { at: new Date() })], "any"));
        await refuse(store.append("s", [ev("A", { n: Number.NaN })], "any"));
        await expect(store.append("s", [ev("A", { n: 1n })], "any")).rejects.toThrow(/bigint.*string/);
        await refuse(store.readStream("s", { maxCount: -1 }));
      });
    });

    describe("reading", () => {
      it("reads a stream from a version, with a maximum count", async () => {
        await store.append(
          "s",
          ["A", "B", "C", "D", "E"].map((t) => ev(t)),
          "no_stream",
        );
        const types = async (o: { fromVersion?: bigint; maxCount?: number }) => (await store.readStream("s", o)).map((e) => e.type);
        expect(await types({ fromVersion: 2n })).toEqual(["C", "D", "E"]);
        expect(await types({ fromVersion: 1n, maxCount: 2 })).toEqual(["B", "C"]);
        expect(await types({ maxCount: 0 })).toEqual([]);
        expect(await types({ fromVersion: 9n })).toEqual([]);
        expect(await store.readStream("missing")).toEqual([]);
      });

      it("reads all streams in global order, fromPosition exclusive, filtered by prefix", async () => {
        await store.append("replication-a", [ev("A0")], "no_stream");
        await store.append("site-x", [ev("X0")], "no_stream");
        await store.append("replication-b", [ev("B0"), ev("B1")], "no_stream");
        await store.append("replication-a", [ev("A1")], 0n);

        const all = await store.readAll();
        expect(all.map((e) => e.type)).toEqual(["A0", "X0", "B0", "B1", "A1"]);
        for (let i = 1; i < all.length; i++) expect(all[i]!.globalPosition > all[i - 1]!.globalPosition).toBe(true);

        const afterSecond = await store.readAll({ fromPosition: all[1]!.globalPosition });
        expect(afterSecond.map((e) => e.type)).toEqual(["B0", "B1", "A1"]);
        expect((await store.readAll({ fromPosition: all[4]!.globalPosition })).length).toBe(0);
        expect((await store.readAll({ maxCount: 2 })).map((e) => e.type)).toEqual(["A0", "X0"]);

        const repl = await store.readAll({ streamPrefix: "replication-" });
        expect(repl.map((e) => e.type)).toEqual(["A0", "B0", "B1", "A1"]);
        const page = await store.readAll({ streamPrefix: "replication-", fromPosition: all[2]!.globalPosition, maxCount: 1 });
        expect(page.map((e) => e.type)).toEqual(["B1"]);
        expect(await store.readAll({ streamPrefix: "runbook-" })).toEqual([]);
      });

      it("round-trips data and metadata exactly, including nesting and unicode", async () => {
        const data = {
          name: "Réplica ✓ 仮想マシン 🚀",
          combining: "e\u0301",
          nested: { deep: { list: [1, -2.5, 1e21, 0, null, true, false, "", { "key with spaces": "x" }] } },
          empty: {},
          emptyList: [],
          big: Number.MAX_SAFE_INTEGER,
          quote: 'he said "hi"\n\ttab \\ slash',
        };
        const metadata = { correlationId: "c-1", actor: { user: "ops", host: "ħøst" } };
        await store.append(
          "rt",
          [
            { type: "T", data, metadata },
            { type: "U", data: { dropped: undefined, kept: 1 } },
          ],
          "no_stream",
        );
        const [e, f] = await store.readStream("rt");
        expect(e!.data).toEqual(data);
        expect(e!.metadata).toEqual(metadata);
        expect(f!.data).toStrictEqual({ kept: 1 });
        expect(f!.metadata).toStrictEqual({});
        expect(e!.recordedAt).toBeInstanceOf(Date);
        expect(Math.abs(e!.recordedAt.getTime() - Date.now())).toBeLessThan(60_000);
      });

      it("hands out copies, so callers cannot alter the ledger", async () => {
        const data = { list: [1, 2] };
        await store.append("iso", [ev("T", data)], "no_stream");
        data.list.push(3);
        const [read] = await store.readStream("iso");
        (read!.data.list as number[]).push(4);
        expect((await store.readStream("iso"))[0]!.data).toEqual({ list: [1, 2] });
      });
    });

    describe("subscribe", () => {
      it("catches up, then delivers live appends once each in global order, and stops on close", async () => {
        await store.append("a", [ev("A0"), ev("A1")], "no_stream");
        await store.append("b", [ev("B0")], "no_stream");
        const seen: RecordedEvent[] = [];
        const sub = store.subscribe({}, (e) => void seen.push(e));
        await sub.caughtUp;
        expect(seen.map((e) => e.type)).toEqual(["A0", "A1", "B0"]);

        await store.append("a", [ev("A2"), ev("A3")], 1n);
        await store.append("c", [ev("C0")], "no_stream");
        await waitFor(() => seen.length >= 6, "live events");
        const all = await store.readAll();
        expect(seen.map((e) => e.globalPosition)).toEqual(all.map((e) => e.globalPosition));
        expect(seen).toEqual(all);

        await sub.close();
        await store.append("a", [ev("AfterClose")], "any");
        await new Promise((r) => setTimeout(r, 50));
        expect(seen).toHaveLength(6);
        await expect(sub.closed).resolves.toBeUndefined();
      });

      it("starts after fromPosition and filters by stream prefix", async () => {
        await store.append("replication-a", [ev("A0")], "no_stream");
        await store.append("site-x", [ev("X0")], "no_stream");
        const first = (await store.readAll())[0]!;
        await store.append("replication-a", [ev("A1")], 0n);
        const seen: string[] = [];
        const sub = store.subscribe({ fromPosition: first.globalPosition, streamPrefix: "replication-" }, (e) => {
          seen.push(e.type);
        });
        await sub.caughtUp;
        await store.append("site-x", [ev("X1")], 0n);
        await store.append("replication-b", [ev("B0")], "no_stream");
        await waitFor(() => seen.length >= 2, "prefix events");
        await sub.close();
        expect(seen).toEqual(["A1", "B0"]);
      });

      it("has no gaps or duplicates when appends race a slow handler", async () => {
        for (let i = 0; i < 5; i++) await store.append("load", [ev(`E${i}`)], "any");
        const seen: bigint[] = [];
        let appendedDuringHandler = false;
        const sub = store.subscribe({}, async (e) => {
          seen.push(e.globalPosition);
          if (!appendedDuringHandler) {
            appendedDuringHandler = true;
            for (let i = 0; i < 20; i++) await store.append("load", [ev(`Live${i}`)], "any");
          }
          await new Promise((r) => setTimeout(r, 1));
        });
        await waitFor(() => seen.length >= 25, "all 25 events");
        await new Promise((r) => setTimeout(r, 30));
        await sub.close();
        expect(seen).toEqual((await store.readAll()).map((e) => e.globalPosition));
      });

      it("can be closed from inside its own handler", async () => {
        await store.append("s", [ev("A"), ev("B"), ev("C")], "no_stream");
        const seen: string[] = [];
        const sub = store.subscribe({}, async (e) => {
          seen.push(e.type);
          if (e.type === "B") await sub.close();
        });
        await sub.closed;
        expect(seen).toEqual(["A", "B"]);
      });

      it("stops at a failing handler and reports its error through caughtUp and closed", async () => {
        await store.append("s", [ev("A"), ev("Boom"), ev("C")], "no_stream");
        const seen: string[] = [];
        const sub = store.subscribe({}, (e) => {
          if (e.type === "Boom") throw new Error("handler failed");
          seen.push(e.type);
        });
        await expect(sub.closed).rejects.toThrow("handler failed");
        await expect(sub.caughtUp).rejects.toThrow("handler failed");
        expect(seen).toEqual(["A"]);
        await sub.close();
      });

      it("is closed by closing the store", async () => {
        const sub = store.subscribe({}, () => undefined);
        await sub.caughtUp;
        await store.close();
        await expect(sub.closed).resolves.toBeUndefined();
      });
    });

    describe("integrity", () => {
      it("chains each stream's events by hash, verifiably", async () => {
        await store.append("a", [ev("A0", { n: 1 }), ev("A1", { n: 2 })], "no_stream");
        await store.append("b", [{ type: "B0", data: { x: "y" }, metadata: { by: "test" } }], "no_stream");
        await store.append("a", [ev("A2")], 1n);
        const all = await store.readAll();
        const last = new Map<string, string>();
        for (const e of all) {
          expect(e.previousHash).toBe(last.get(e.stream) ?? GENESIS_HASH);
          expect(e.hash).toMatch(/^[0-9a-f]{64}$/);
          expect(e.hash).toBe(computeEventHash(e.previousHash, { ...e, recordedAt: e.recordedAt.toISOString() }));
          last.set(e.stream, e.hash);
        }
        expect(await verifyLedger(store)).toEqual({ ok: true, streams: 2, events: 4, problems: [] });
      });

      it("refuses every operation once closed", async () => {
        await store.close();
        await expect(store.append("s", [ev("A")], "any")).rejects.toBeInstanceOf(LedgerClosedError);
        await expect(store.readAll()).rejects.toBeInstanceOf(LedgerClosedError);
        await expect(store.readStream("s")).rejects.toBeInstanceOf(LedgerClosedError);
        await expect(store.streamVersion("s")).rejects.toBeInstanceOf(LedgerClosedError);
        expect(() => store.subscribe({}, () => undefined)).toThrow(LedgerClosedError);
        await expect(store.readSnapshot("k")).rejects.toBeInstanceOf(LedgerClosedError);
        await expect(store.writeSnapshot(sealSnapshot({ key: "k", at: 0n, foldVersion: 1, state: {} }))).rejects.toBeInstanceOf(LedgerClosedError);
        await expect(store.deleteSnapshots("")).rejects.toBeInstanceOf(LedgerClosedError);
        await store.close();
      });
    });

    describe("snapshots", () => {
      const savedAt = new Date("2026-12-04T10:00:00.123Z");
      const snap = (key: string, at: bigint, state: unknown, foldVersion = 1) => sealSnapshot({ key, at, atHash: "ab".repeat(32), foldVersion, state, savedAt });

      it("reads back exactly what was written, and a missing key as undefined", async () => {
        expect(await store.readSnapshot("relationship:vm1")).toBeUndefined();
        const written = snap("relationship:vm1", 12_345_678_901_234n, { s: "replicating", n: [1, 2], u: "ü" });
        await store.writeSnapshot(written);
        const read = await store.readSnapshot("relationship:vm1");
        expect(read).toEqual(written);
        expect(openSnapshot(read, { key: "relationship:vm1", foldVersion: 1 })).toEqual({
          ok: true,
          at: 12_345_678_901_234n,
          atHash: "ab".repeat(32),
          state: { s: "replicating", n: [1, 2], u: "ü" },
        });
      });

      it("keeps one record per key: a write replaces it", async () => {
        await store.writeSnapshot(snap("k1", 1n, { v: 1 }));
        await store.writeSnapshot(snap("k2", 1n, { v: 2 }));
        await store.writeSnapshot(snap("k1", 9n, { v: 3 }, 2));
        const k1 = await store.readSnapshot("k1");
        expect([k1?.at, k1?.foldVersion, k1?.state]).toEqual([9n, 2, '{"v":3}']);
        expect((await store.readSnapshot("k2"))?.state).toBe('{"v":2}');
      });

      it("deletes by key prefix and says how many", async () => {
        for (const k of ["relationship:a", "relationship:b", "read-models"]) await store.writeSnapshot(snap(k, 0n, {}));
        expect(await store.deleteSnapshots("relationship:")).toBe(2);
        expect(await store.readSnapshot("relationship:a")).toBeUndefined();
        expect(await store.readSnapshot("read-models")).toBeDefined();
        expect(await store.deleteSnapshots("")).toBe(1);
        expect(await store.readSnapshot("read-models")).toBeUndefined();
      });

      it("refuses records it cannot store", async () => {
        await expect(store.writeSnapshot({ ...snap("k", 0n, {}), key: "" })).rejects.toBeInstanceOf(LedgerArgumentError);
        await expect(store.writeSnapshot({ ...snap("k", 0n, {}), at: -1n })).rejects.toBeInstanceOf(LedgerArgumentError);
        await expect(store.writeSnapshot({ ...snap("k", 0n, {}), at: 1 as unknown as bigint })).rejects.toBeInstanceOf(LedgerArgumentError);
        await expect(store.writeSnapshot({ ...snap("k", 0n, {}), savedAt: new Date(NaN) })).rejects.toBeInstanceOf(LedgerArgumentError);
        expect(await store.readSnapshot("k")).toBeUndefined();
      });

      it("are not events: reading, subscribing and verifying see none of them", async () => {
        await store.append("a", [ev("A0")], "no_stream");
        await store.writeSnapshot(snap("relationship:a", 0n, { x: 1 }));
        expect((await store.readAll()).map((e) => e.type)).toEqual(["A0"]);
        expect(await store.streamVersion("a")).toBe(0n);
        expect(await verifyLedger(store)).toEqual({ ok: true, streams: 1, events: 1, problems: [] });
      });

      it("are ignored by openSnapshot when damaged, or from another fold or schema version", async () => {
        const good = snap("k", 3n, { v: 1 });
        await store.writeSnapshot({ ...good, state: '{"v":2}' });
        expect(openSnapshot(await store.readSnapshot("k"), { key: "k", foldVersion: 1 })).toMatchObject({ ok: false, reason: expect.stringMatching(/checksum/) });
        await store.writeSnapshot(good);
        expect(openSnapshot(await store.readSnapshot("k"), { key: "k", foldVersion: 2 })).toMatchObject({ ok: false, reason: expect.stringMatching(/fold version 1/) });
        await store.writeSnapshot({ ...good, schemaVersion: 99 });
        expect(openSnapshot(await store.readSnapshot("k"), { key: "k", foldVersion: 1 })).toMatchObject({ ok: false, reason: expect.stringMatching(/schema 99/) });
        await store.writeSnapshot({ ...good, at: 4n });
        expect(openSnapshot(await store.readSnapshot("k"), { key: "k", foldVersion: 1 })).toMatchObject({ ok: false, reason: expect.stringMatching(/checksum/) });
      });
    });
  });
}
