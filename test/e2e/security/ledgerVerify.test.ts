import { copyFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import Database from "better-sqlite3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { relationshipStream } from "../../../src/ledger/index.js";
import { runCli } from "../../helpers/processes.js";
import { encodeChunks } from "../../helpers/protocolClient.js";
import { ExpectedDisk, MiB, initialCycle, noise, startSiteB, type SiteB } from "./siteB.js";

// `qreplica ledger verify` as an operator runs it: an intact ledger passes, and an event edited
// by someone who dropped the append-only triggers is found and named.

let site: SiteB;
beforeAll(async () => {
  site = await startSiteB("qr-sec-ldg-");
});
afterAll(async () => {
  await site?.stop();
});

const VM = "vm-ledger";

interface VerifyJson {
  ok: boolean;
  streams: number;
  events: number;
  problems: Array<{ stream: string; version: number; globalPosition: number; reason: string }>;
}

function parseReport(stdout: string): VerifyJson {
  return JSON.parse(stdout) as VerifyJson;
}

describe("qreplica ledger verify on a site's ledger", () => {
  it("passes an intact ledger (exit 0) and names the stream and version of a tampered event (exit 7)", async () => {
    const disk = new ExpectedDisk("vda", 8 * MiB);
    const c = site.open();
    await c.hello({ vmId: VM, generation: 0, disks: [disk.spec] });
    await initialCycle(c, { vmId: VM, generation: 1, seq: 1, disk });
    const inc = encodeChunks(disk.apply([{ kind: "data", offset: 4 * MiB, length: MiB, data: noise(MiB, 9) }]), { generation: 1, seq: 2, diskId: "vda" });
    await c.sendCycle({ vmId: VM, generation: 1, seq: 2, kind: "incremental", disks: [disk.spec] }, inc);
    await c.expect("cycleAck");
    await c.finish();
    const events = await site.events(VM);
    expect(events.length).toBeGreaterThanOrEqual(6);

    // Intact, read through the site directory while the site runs.
    const intact = await runCli(["ledger", "verify", "--dir", site.env.siteB, "--json"]);
    expect(intact.code, intact.stderr).toBe(0);
    const okReport = parseReport(intact.stdout);
    expect(okReport.ok).toBe(true);
    expect(okReport.problems).toEqual([]);
    expect(okReport.events).toBeGreaterThanOrEqual(events.length);

    // Stop site B (SIGTERM: a clean close), then copy its ledger with any WAL left beside it and
    // fold the WAL into the copy, so the copy holds every event.
    await site.env.daemons[0]!.kill("SIGTERM");
    const copy = join(site.tmp, "ledger-copy.sqlite");
    copyFileSync(site.ledgerPath, copy);
    for (const suffix of ["-wal", "-shm"]) if (existsSync(site.ledgerPath + suffix)) copyFileSync(site.ledgerPath + suffix, copy + suffix);

    const stream = relationshipStream(VM);
    const target = events.find((e) => e.type === "CycleCommitted")!;
    expect(target).toBeDefined();
    const db = new Database(copy);
    try {
      db.pragma("wal_checkpoint(TRUNCATE)");
      const count = db.prepare("SELECT count(*) AS n FROM events WHERE stream_id = ?").get(stream) as { n: number };
      expect(count.n).toBe(events.length);
      // The triggers stop an accidental UPDATE...
      expect(() => db.prepare("UPDATE events SET data = data WHERE stream_id = ?").run(stream)).toThrow(/append-only/);
      // ...not a tamperer, who drops them and inflates a point's byte count.
      db.exec("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;");
      const row = db.prepare("SELECT data FROM events WHERE stream_id = ? AND stream_version = ?").get(stream, Number(target.version)) as { data: string };
      const data = JSON.parse(row.data) as { dataBytes: number };
      data.dataBytes += 4096;
      const changed = db.prepare("UPDATE events SET data = ? WHERE stream_id = ? AND stream_version = ?").run(JSON.stringify(data), stream, Number(target.version));
      expect(changed.changes).toBe(1);
    } finally {
      db.close();
    }

    const tampered = await runCli(["ledger", "verify", "--file", copy, "--json"]);
    expect(tampered.code, tampered.stderr).toBe(7); // ledger verify found a broken chain
    const bad = parseReport(tampered.stdout);
    expect(bad.ok).toBe(false);
    expect(bad.problems).toHaveLength(1);
    expect(bad.problems[0]).toMatchObject({ stream, version: Number(target.version) });
    expect(bad.problems[0]!.reason).toMatch(/modified/);

    // The site's own ledger was not touched and still verifies.
    const original = await runCli(["ledger", "verify", "--dir", site.env.siteB, "--json"]);
    expect(original.code, original.stderr).toBe(0);
    expect(parseReport(original.stdout).ok).toBe(true);
  });
});
