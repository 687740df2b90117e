import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { waitForCounter } from "../../guest/index.js";
import { getSqliteEventStore, relationshipStream, type EventStore, type RecordedEvent } from "../../src/ledger/index.js";
import { extensionStream, foldExtension } from "../../src/site/extension/extensionLedger.js";
import { runCli, waitFor, type Daemon } from "./processes.js";
import { twoSitesPerTest, type TwoSites, type TwoSitesOptions } from "./twoSites.js";

/**
 * Extended replication's three sites on this machine: the two of twoSites.ts (A the primary's, B
 * its replica) and C, the site B forwards its points to. Each test gets them running with the
 * agent replicating vm1 to B and a first point there; the test then extends (`qreplica extend`).
 */
export interface ThreeSites {
  t: TwoSites;
  /** Site C's directory (t.siteC), `site init`ed with the same CA and started. */
  C: string;
  /** Site B as started here. */
  siteB: Daemon;
  /** A's agent, replicating vm1 to B. */
  agent: Daemon;
}

export interface ThreeSitesOptions extends TwoSitesOptions {
  /** C's `site init --max-points`; absent: the site's default. */
  siteCMaxPoints?: number;
  /** Site A serves too (a test that reverses toward it or asks it). */
  withSiteA?: boolean;
  /** qemu-io writes on the storage-daemon VM's disk before the agent starts. */
  firstWrites?: string[];
}

/**
 * For a test file: returns `setup(prefix, opts)`, which makes the three sites in a fresh temporary
 * directory and waits for B's first point; everything is stopped and removed after the test.
 */
export function threeSitesPerTest(): (prefix: string, opts: ThreeSitesOptions) => Promise<ThreeSites> {
  const newTwoSites = twoSitesPerTest();
  return async (prefix, opts) => {
    const t = await newTwoSites(prefix, opts);
    const C = t.siteC;
    const init = ["site", "init", "--dir", C, "--name", "site-c", "--ca-dir", t.caDir, "--listen", "127.0.0.1:0"];
    const r = await runCli([...init, ...(opts.siteCMaxPoints !== undefined ? ["--max-points", String(opts.siteCMaxPoints)] : [])]);
    if (r.code !== 0) throw new Error(`qreplica ${init.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
    if (opts.withSiteA) await t.startSite(t.siteA);
    const siteB = await t.startSite(t.siteB);
    await t.startSite(C);
    if (opts.firstWrites) await t.vm.guestWrite("vda", opts.firstWrites);
    if (t.guest) await waitForCounter(t.guest.serialLogPath, (v) => v > 2, 90_000);
    const agent = t.startAgent();
    await waitFor("a point on B", async () => ((await t.relationship()).points.length >= 1 ? true : undefined), 90_000);
    return { t, C, siteB, agent };
  };
}

/** Reads a site's ledger (the site may be running: SQLite in WAL mode). */
export async function readLedger<T>(siteDir: string, read: (store: EventStore) => Promise<T>): Promise<T> {
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    return await read(store);
  } finally {
    await store.close();
  }
}

/** The VM's relationship events in a site's ledger. */
export const relationshipEvents = (siteDir: string, vmId = "vm1"): Promise<RecordedEvent[]> => readLedger(siteDir, (s) => s.readStream(relationshipStream(vmId)));

/** What a site's ledger says it forwarded of the VM (extended replication): target and points. */
export const forwardedOn = (siteDir: string, vmId = "vm1") => readLedger(siteDir, async (s) => foldExtension(vmId, await s.readStream(extensionStream(vmId))));

export const sha256File = (path: string): string => createHash("sha256").update(readFileSync(path)).digest("hex");

/** Waits until B's ledger records `count` points forwarded to C; returns them. */
export const waitForForwarded = (siteDir: string, count: number, timeoutMs = 90_000) =>
  waitFor(
    `${count} point(s) forwarded to C`,
    async () => {
      const { forwarded } = await forwardedOn(siteDir);
      return forwarded.length >= count ? forwarded : undefined;
    },
    timeoutMs,
  );
