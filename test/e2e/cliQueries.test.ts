import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { getSqliteEventStore, relationshipStream } from "../../src/ledger/index.js";
import { join } from "node:path";
import { makeTmpDir } from "../helpers/tmpDir.js";
import { runCli, waitFor } from "../helpers/processes.js";
import { setupTwoSites, type TwoSites } from "../helpers/twoSites.js";

const MiB = 1024 * 1024;
let env: TwoSites;
let cleanup: () => void;

interface EventsJson {
  events: Array<{ streamVersion: number; globalPosition: number; type: string }>;
  nextPosition: number;
  more: boolean;
}

async function ledgerVersions(): Promise<number[]> {
  const store = getSqliteEventStore({ path: join(env.siteB, "ledger.sqlite"), create: false });
  try {
    return (await store.readStream(relationshipStream("vm1"))).map((e) => Number(e.version));
  } finally {
    await store.close();
  }
}

describe("CLI queries: events and points say what they return", { timeout: 240_000 }, () => {
  beforeAll(async () => {
    const tmp = makeTmpDir("qr-cliq-");
    cleanup = tmp.cleanup;
    env = await setupTwoSites(tmp.path, { diskBytes: 64 * MiB, intervalSeconds: 1 });
    await env.startSite(env.siteB);
    // Data for the initial point, whose per-disk count `points --json` must show.
    await env.vm.guestWrite("vda", ["write -P 0x5a 0 2M"]);
    env.startAgent();
    await waitFor("three recovery points", async () => ((await env.relationship()).points.length >= 3 ? true : undefined), 120_000);
    // Stop the agent so the ledger stops growing while the pages are compared.
    await env.daemons[1]!.kill("SIGTERM");
  });
  afterAll(async () => {
    await env?.stopAll();
    if (!process.env.QR_KEEP) cleanup?.();
  });

  it("events --help prints the options (the --from default once crashed it)", async () => {
    const r = await runCli(["events", "--help"]);
    expect(r.stderr).not.toMatch(/BigInt/);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/--from <n>/);
    expect(r.stdout).toMatch(/nextPosition/);
  });

  it("events --json says whether more events exist and where to continue; --all pages through everything", async () => {
    const all = await ledgerVersions();
    expect(all.length).toBeGreaterThan(6);
    const first = await runCli(["events", "vm1", "--dir", env.siteB, "--json", "--limit", "4"]);
    expect(first.code, first.stderr).toBe(0);
    // The site listens on 127.0.0.1: dialled by IP, the CLI must not set an IP as the TLS server name.
    expect(first.stderr).not.toContain("DEP0123");
    const page1 = JSON.parse(first.stdout) as EventsJson;
    expect(page1.events.map((e) => e.streamVersion)).toEqual(all.slice(0, 4));
    expect(page1.more).toBe(true);
    const rest = await runCli(["events", "vm1", "--dir", env.siteB, "--json", "--from", String(page1.nextPosition), "--limit", "100000"]);
    const page2 = JSON.parse(rest.stdout) as EventsJson;
    expect(page2.events.map((e) => e.streamVersion)).toEqual(all.slice(4));
    expect(page2.more).toBe(false);
    const everything = JSON.parse((await runCli(["events", "vm1", "--dir", env.siteB, "--json", "--all"])).stdout) as EventsJson;
    expect(everything.events.map((e) => e.streamVersion)).toEqual(all);
    expect(everything.more).toBe(false);
    // Exactly as many events as the ledger holds: no phantom "more".
    const exact = JSON.parse((await runCli(["events", "vm1", "--dir", env.siteB, "--json", "--limit", String(all.length)])).stdout) as EventsJson;
    expect(exact.more).toBe(false);
    const table = await runCli(["events", "vm1", "--dir", env.siteB, "--limit", "2"]);
    expect(table.stdout).toMatch(/more events follow: --from \d+/);
  });

  it("points and events of an unknown VM fail naming the VM and the site", async () => {
    for (const cmd of ["points", "events"]) {
      const r = await runCli([cmd, "nosuch", "--dir", env.siteB]);
      expect(r.code).toBe(3); // not found
      expect(r.stderr).toMatch(/nosuch/);
      expect(r.stderr).toMatch(/site-b/);
      const j = await runCli([cmd, "nosuch", "--dir", env.siteB, "--json"]);
      expect(j.code).toBe(3);
      expect(JSON.parse(j.stdout)).toMatchObject({ error: { message: expect.stringMatching(/no replication relationship for VM 'nosuch'/) } });
    }
    const ok = await runCli(["points", "vm1", "--dir", env.siteB, "--json"]);
    expect(ok.code).toBe(0);
  });

  it("points --json gives each disk's changed bytes, adding up to the point's", async () => {
    const points = JSON.parse((await runCli(["points", "vm1", "--dir", env.siteB, "--json"])).stdout) as Array<{
      changedBytes: number;
      disks: Array<{ diskId: string; changedBytes: number }>;
    }>;
    expect(points[0]!.changedBytes).toBe(2 * MiB);
    for (const p of points) expect(p.disks.reduce((n, d) => n + d.changedBytes, 0)).toBe(p.changedBytes);
    expect(points[0]!.disks).toEqual([expect.objectContaining({ diskId: "vda", changedBytes: 2 * MiB })]);
  });
});
