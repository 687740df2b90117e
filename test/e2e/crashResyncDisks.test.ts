/**
 * Resync by comparison after the primary's QEMU is killed (kill -9) with a two-disk VM, one disk
 * resized while QEMU was down: the new point equals the primary, older points are untouched.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { stringify as toYaml } from "yaml";
import { compareImages, resizeImage, startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { AGENT, startDaemon, waitFor } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";
import { ledgerEvents, pointContentHashes, resyncHashesSent, sequenceAfter } from "../helpers/resyncChecks.js";
import { readFileSync } from "node:fs";
import { addressFile } from "../../src/site/siteConfig.js";

const MiB = 1024 * 1024;
let env: TwoSites | undefined;
let vm: StorageDaemonVm | undefined;
let cleanup: (() => void) | undefined;
afterEach(async () => {
  await env?.stopAll();
  await vm?.proc.kill();
  if (!process.env.QR_KEEP) cleanup?.();
  env = undefined;
  vm = undefined;
});

function tail(path: string, lines = 30): string {
  try {
    return readFileSync(path, "utf8")
      .split("\n")
      .filter((l) => !l.includes('"level":20'))
      .slice(-lines)
      .join("\n");
  } catch {
    return "(no log)";
  }
}

describe("resync after a crash of the primary's QEMU (two disks, one resized while down)", { timeout: 300_000 }, () => {
  it("re-creates tracking, sends only what differs, keeps every older point", async () => {
    const tmp = makeTmpDir("qr-resync-disks-");
    cleanup = tmp.cleanup;
    env = await setupTwoSites(tmp.path, { diskBytes: 16 * MiB, intervalSeconds: 1 });
    const t = env;
    mkdirSync(join(t.dir, "vm2"));
    vm = await startStorageDaemonVm(join(t.dir, "vm2"), [
      { id: "vda", sizeBytes: 64 * MiB },
      { id: "vdb", sizeBytes: 32 * MiB },
    ]);
    const v = vm;
    await t.startSite(t.siteA);
    await t.startSite(t.siteB);
    await v.guestWrite("vda", ["write -P 0x11 0 8M", "write -P 0x12 40M 2M"]);
    await v.guestWrite("vdb", ["write -P 0x21 1M 4M"]);
    const config = join(t.dir, "agent2.yaml");
    writeFileSync(
      config,
      toYaml({
        siteId: "site-a",
        stateDir: join(t.dir, "agent2-state"),
        tls: { caFile: join(t.caDir, "ca.crt"), certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") },
        vms: [
          {
            id: "vm2",
            qmpSocket: v.qmpSocketPath,
            nbdSocket: v.nbdSocketPath,
            disks: v.disks.map((d) => ({ id: d.id, node: d.node })),
            replicaSite: readFileSync(addressFile(t.siteB), "utf8").trim(),
            replicaSiteId: "site-b",
            intervalSeconds: 1,
            compressionLevel: 1,
            // The FIPS choice: the replica cannot use its (BLAKE3) index and reads and hashes its side.
            resyncDigest: "sha256",
          },
        ],
      }),
    );
    t.daemons.push(startDaemon(AGENT, ["--config", config], join(t.dir, "agent2.log")));
    const diag = () => `\n--- agent2.log ---\n${tail(join(t.dir, "agent2.log"))}\n--- site-b ---\n${tail(join(t.siteB, "site.log"))}`;
    await waitFor("two points", async () => ((await t.relationship("vm2")).points.length >= 2 ? true : undefined), 90_000).catch((e: Error) => {
      throw new Error(e.message + diag());
    });
    await v.guestWrite("vda", ["write -P 0x13 20M 1M"]);
    await waitFor("a third point", async () => ((await t.relationship("vm2")).points.length >= 3 ? true : undefined), 90_000);

    const before = await t.relationship("vm2");
    const hashesBefore = await pointContentHashes(before.points, t.dir);
    const eventsBefore = (await ledgerEvents(t.siteB, "vm2")).length;

    // Diverge, then crash: these writes may or may not reach a point before the kill.
    const scattered = Array.from({ length: 8 }, (_, i) => `write -P ${0x40 + i} ${i * 7 + 3}M 128k`);
    await v.guestWrite("vda", scattered);
    await v.guestWrite("vdb", ["write -P 0x51 9M 256k", "write -P 0x52 30M 256k"]);
    const divergedBytes = 8 * 128 * 1024 + 512 * 1024;
    await v.proc.kill("SIGKILL");
    // Resized while QEMU is down: the resync point must carry the new size.
    await resizeImage(v.disks[1]!.path, 48 * MiB);
    rmSync(v.qmpSocketPath, { force: true });
    rmSync(v.nbdSocketPath, { force: true });
    await v.restart();

    const resyncPoint = await waitFor(
      "a resync point",
      async () => {
        const events = await ledgerEvents(t.siteB, "vm2");
        const commit = events.slice(eventsBefore).find((e) => e.type === "CycleCommitted" && (e.data as { kind: string }).kind === "resync");
        return commit ? (commit.data as { cycleSeq: number; dataBytes: number; zeroBytes: number; wireBytes: number; comparedBytes?: number }) : undefined;
      },
      120_000,
    ).catch((e: Error) => {
      throw new Error(e.message + diag());
    });

    const after = await t.relationship("vm2");
    const point = after.points.find((p) => p.cycleSeq === resyncPoint.cycleSeq)!;
    expect(point).toBeDefined();
    for (const d of v.disks) {
      const cmp = await compareImages(point.disks.find((x) => x.diskId === d.id)!.imagePath, v.guestUri(d.id), { formatA: "qcow2", formatB: "raw" });
      expect(cmp.detail, `disk ${d.id}`).toMatch(/identical/i);
    }
    expect(point.disks.find((d) => d.diskId === "vdb")!.sizeBytes).toBe(48 * MiB);

    // Every older point is exactly as it was.
    const kept = after.points.filter((p) => before.points.some((b) => b.pointId === p.pointId));
    expect(kept.map((p) => p.pointId)).toEqual(before.points.map((p) => p.pointId));
    expect(await pointContentHashes(kept, t.dir)).toEqual(hashesBefore);

    // Only what differs travelled: the scattered writes (at 64 KiB granularity), the new 16 MiB as zeroes.
    expect(resyncPoint.comparedBytes).toBe((64 + 48) * MiB);
    expect(resyncPoint.dataBytes).toBeLessThanOrEqual(divergedBytes);
    expect(resyncPoint.zeroBytes).toBeLessThanOrEqual(16 * MiB + 128 * 1024);
    expect(resyncPoint.wireBytes).toBeLessThan(2 * MiB);

    const sent = resyncHashesSent(t.siteB).find((l) => l.vm === "vm2" && l.seq === resyncPoint.cycleSeq);
    expect(sent).toMatchObject({ digest: "sha256", hashedBytes: (64 + 32) * MiB, indexedBytes: 0 });
    expect(sent!.unindexed.vda).toMatch(/compares with sha256/);

    const events = await ledgerEvents(t.siteB, "vm2");
    expect(sequenceAfter(events, eventsBefore, ["ResyncRequired", "ResyncStarted", "ResyncCompleted"])).toEqual(["ResyncRequired", "ResyncStarted", "ResyncCompleted"]);
    const required = events.slice(eventsBefore).find((e) => e.type === "ResyncRequired")!;
    expect((required.data as { reason: string }).reason).toMatch(/vda: BITMAP_(MISSING|INCONSISTENT) \(bitmap qreplica-\d+ is (missing|inconsistent)/);
    expect((required.data as { reason: string }).reason).toMatch(/vdb: BITMAP_(MISSING|INCONSISTENT)/);

    // Tracking was re-created with the cut-off: the next change travels as an incremental cycle.
    await v.guestWrite("vdb", ["write -P 0x77 40M 64k"]);
    const wroteAt = Date.now();
    const next = await waitFor("an incremental point after the resync", async () => (await t.relationship("vm2")).points.find((p) => Date.parse(p.cutoffAt) > wroteAt), 60_000);
    const cmp = await compareImages(next.disks.find((d) => d.diskId === "vdb")!.imagePath, v.guestUri("vdb"), { formatA: "qcow2", formatB: "raw" });
    expect(cmp.detail).toMatch(/identical/i);
    const nextKind = (await ledgerEvents(t.siteB, "vm2")).find((e) => e.type === "CycleCommitted" && (e.data as { cycleSeq: number }).cycleSeq === next.cycleSeq)!;
    expect((nextKind.data as { kind: string }).kind).toBe("incremental");
  });
});
