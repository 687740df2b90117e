/**
 * What the site fuzzers hold the real site to, besides each call's own answer: it keeps serving
 * (its process is alive and a valid call succeeds), a point committed before the fuzzing is still
 * byte-identical and its ledger intact, and nothing was written outside the site's directory or
 * under a storage name that is not a valid id (path tricks in VM, disk and point ids).
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { status, type StatusObject } from "@grpc/grpc-js";
import { expect } from "vitest";
import { assertLedgerIntact, getSqliteEventStore } from "../../src/ledger/index.js";
import { isValidId } from "../../src/model/ids.js";
import { ExpectedDisk, MiB, initialCycle, type SiteB } from "../e2e/security/siteB.js";

/** Every file below `dir`, relative to it. */
export function listTree(dir: string, base = dir, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    let st;
    try {
      st = statSync(p);
    } catch {
      continue; // removed meanwhile (a discarded partial point)
    }
    out.push(relative(base, p));
    if (st.isDirectory()) listTree(p, base, out);
  }
  return out;
}

export interface KeptPoint {
  vmId: string;
  imagePath: string;
  disk: ExpectedDisk;
  sha256: string;
}

/** A VM with one committed point, made before any fuzzing, to be found intact afterwards. */
export async function keptPoint(site: SiteB, vmId: string): Promise<KeptPoint> {
  const disk = new ExpectedDisk("vda", 8 * MiB);
  const c = site.open();
  const ack = await c.hello({ vmId, generation: 0, disks: [disk.spec] });
  const cycleAck = await initialCycle(c, { vmId, generation: Number(ack.generation), seq: 1, disk });
  expect(cycleAck.recoveryPointId).toBe("rp-1");
  expect((await c.finish()).code).toBe(status.OK);
  const state = await site.relationship(vmId);
  const imagePath = state.points[0]!.disks[0]!.imagePath;
  return { vmId, imagePath, disk, sha256: sha256(imagePath) };
}

function sha256(file: string): string {
  return createHash("sha256").update(readFileSync(file)).digest("hex");
}

/** The kept point: the same bytes on disk, still the same image as the expected disk, the ledger intact. */
export async function expectKeptPointIntact(site: SiteB, kept: KeptPoint): Promise<void> {
  expect(sha256(kept.imagePath)).toBe(kept.sha256);
  const state = await site.relationship(kept.vmId);
  expect(state.points[0]?.pointId).toBe("rp-1");
  expect((await kept.disk.compareWithPoint(kept.imagePath, join(site.tmp, `${kept.vmId}.raw`))).detail).toMatch(/identical/i);
  const store = getSqliteEventStore({ path: site.ledgerPath, create: false });
  try {
    await assertLedgerIntact(store);
  } finally {
    await store.close();
  }
}

/** Nothing new outside the site's directory; every VM and disk directory in storage is a valid id. */
export function expectNoPathEscapes(site: SiteB, before: string[]): void {
  const siteDir = relative(site.tmp, site.env.siteB);
  const known = new Set(before);
  const escaped = listTree(site.tmp).filter((p) => !known.has(p) && p !== siteDir && !p.startsWith(`${siteDir}/`) && !p.endsWith(".raw"));
  expect(escaped).toEqual([]);
  if (!existsSync(site.storageRoot)) return;
  for (const vm of readdirSync(site.storageRoot)) {
    expect({ vm, valid: isValidId(vm) }).toEqual({ vm, valid: true });
    const vmDir = join(site.storageRoot, vm);
    if (!statSync(vmDir).isDirectory()) continue;
    for (const disk of readdirSync(vmDir)) {
      if (statSync(join(vmDir, disk)).isDirectory()) expect({ vm, disk, valid: isValidId(disk) }).toEqual({ vm, disk, valid: true });
    }
  }
}

/** The site process has not exited. */
export function expectSiteAlive(site: SiteB): void {
  const d = site.env.daemons[site.env.daemons.length - 1]!;
  expect(d.child.exitCode).toBeNull();
  expect(d.child.signalCode).toBeNull();
}

/** A non-OK status must say what was wrong: a known code and a message, never UNKNOWN or INTERNAL, and never the deadline. */
export function clearStatus(s: Pick<StatusObject, "code" | "details">, what: string): string | undefined {
  if (s.code === status.OK) return undefined;
  if (s.code === status.UNKNOWN || s.code === status.INTERNAL) return `${what} ended ${status[s.code]}: ${s.details}`;
  // Every client here sets a deadline far above any answer's time: reaching it means the site never ended the call.
  if (s.code === status.DEADLINE_EXCEEDED) return `${what} hung until the client's deadline: ${s.details}`;
  if (!s.details || s.details.trim().length < 8) return `${what} ended ${status[s.code]} without an explanation (${JSON.stringify(s.details)})`;
  return undefined;
}
