import { existsSync, mkdirSync, readFileSync, rmSync, statSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { afterEach, describe, expect, it } from "vitest";
import { getSqliteEventStore, loadRelationship, type RelationshipState } from "../../src/ledger/index.js";
import { compareImages, createImage } from "../../src/qemu/processes/index.js";
import { addressFile } from "../../src/site/siteConfig.js";
import { GuestIoVm, mountTmpfs } from "../helpers/guestIo.js";
import { AGENT, CLI, cliJson, runCli, startDaemon, waitFor, type Daemon } from "../helpers/processes.js";
import { makeTmpDir } from "../helpers/tmpDir.js";

const MiB = 1024 * 1024;
const QDEV = "/machine/peripheral/vda-dev/virtio-backend";
const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function cli(args: string[]): Promise<string> {
  const r = await runCli(args);
  if (r.code !== 0) throw new Error(`qreplica ${args.join(" ")} failed (${r.code}): ${r.stderr}${r.stdout}`);
  return r.stdout;
}

async function relationship(siteDir: string): Promise<RelationshipState | undefined> {
  if (!existsSync(join(siteDir, "ledger.sqlite"))) return undefined;
  const store = getSqliteEventStore({ path: join(siteDir, "ledger.sqlite"), create: false });
  try {
    return (await loadRelationship(store, "vm1")).state;
  } finally {
    await store.close();
  }
}

interface Rig {
  dir: string;
  siteB: string;
  scratchDir: string;
  disk: string;
  vm: GuestIoVm;
  agent: Daemon;
  agentLog: string;
}

/**
 * Site B served, a running qemu-system VM (TCG) with one disk, its scratch on a tmpfs of
 * `scratchMiB`, and an agent process replicating it every second.
 */
async function startRig(opts: {
  scratchMiB: number;
  diskBytes: number;
  firstWrite: number;
  vmConfig?: Record<string, unknown>;
  /** The VM's disk and device arguments, given the disk path (default: virtio-blk directly on node vda). */
  vmArgs?: (disk: string) => string[];
  /** Wait for the initial point before returning (default true). */
  initialPoint?: boolean;
}): Promise<Rig> {
  const tmp = makeTmpDir("qr-e2e-");
  cleanups.push(tmp.cleanup);
  const dir = tmp.path;
  const caDir = join(dir, "ca");
  const siteB = join(dir, "site-b");
  await cli(["pki", "create-ca", "--dir", caDir]);
  await cli(["site", "init", "--dir", siteB, "--name", "site-b", "--ca-dir", caDir, "--listen", "127.0.0.1:0"]);
  await cli(["pki", "issue", "--ca-dir", caDir, "--name", "agent-a", "--out-dir", join(dir, "agent-tls")]);
  await cli(["authorize", "--dir", siteB, "--primary", "agent-a"]);
  const started = Date.now();
  const daemons: Daemon[] = [];
  cleanups.push(async () => {
    for (const d of daemons.reverse()) await d.kill("SIGTERM");
  });
  daemons.push(startDaemon(CLI, ["site", "serve", "--dir", siteB], join(siteB, "site.log")));
  const address = await waitFor(
    "site B to listen",
    () => {
      const f = addressFile(siteB);
      return existsSync(f) && statSync(f).mtimeMs >= started - 5 ? readFileSync(f, "utf8").trim() || undefined : undefined;
    },
    30_000,
  );

  const scratchDir = join(dir, "scratch");
  mkdirSync(scratchDir);
  cleanups.push(mountTmpfs(scratchDir, opts.scratchMiB));
  const disk = join(dir, "vda.qcow2");
  await createImage(disk, opts.diskBytes);
  const agentQmp = join(dir, "agent-qmp.sock");
  const layout = opts.vmArgs ? { disks: [], extraArgs: opts.vmArgs(disk) } : { disks: [{ nodeName: "vda", path: disk }] };
  const vm = await GuestIoVm.start({ qmpSocketPath: agentQmp, ...layout, accel: "tcg" }, join(dir, "test-qmp.sock"));
  cleanups.push(() => vm.kill());
  await vm.write(QDEV, 0x11, 0, opts.firstWrite);

  const agentConfig = join(dir, "agent.yaml");
  writeFileSync(
    agentConfig,
    toYaml({
      siteId: "site-a",
      stateDir: join(dir, "agent-state"),
      tls: { caFile: join(caDir, "ca.crt"), certFile: join(dir, "agent-tls", "agent-a.crt"), keyFile: join(dir, "agent-tls", "agent-a.key") },
      vms: [
        {
          id: "vm1",
          qmpSocket: agentQmp,
          nbdSocket: join(dir, "nbd.sock"),
          disks: [{ id: "vda", node: "vda" }],
          scratchDir,
          replicaSite: address,
          replicaSiteId: "site-b",
          intervalSeconds: 1,
          compressionLevel: 1,
          ...opts.vmConfig,
        },
      ],
    }),
  );
  const agentLog = join(dir, "agent.log");
  const agent = startDaemon(AGENT, ["--config", agentConfig], agentLog);
  daemons.push(agent);
  if (opts.initialPoint !== false) await waitFor("the initial point", async () => ((await relationship(siteB))?.points.length ? true : undefined), 120_000);
  return { dir, siteB, scratchDir, disk, vm, agent, agentLog };
}

describe("agent process against a real site: guest-safe cut-offs", () => {
  it("a guest rewriting its disk faster than a 16 MiB scratch can hold: writes all succeed, the site records SNAPSHOT_BROKEN, replication recovers byte-identical", async () => {
    const { siteB, scratchDir, disk, vm, agent } = await startRig({ scratchMiB: 16, diskBytes: 320 * MiB, firstWrite: 64 * MiB });

    // The guest rewrites 256 MiB over and over, 16 MiB per write, while cycles run.
    const pattern = new Map<number, number>();
    let stop = false;
    let writes = 0;
    const writer = (async () => {
      for (let p = 0x20; !stop; p = p === 0x7f ? 0x20 : p + 1) {
        for (let off = 0; off < 256 * MiB && !stop; off += 16 * MiB) {
          await vm.write(QDEV, p, off, 16 * MiB);
          pattern.set(off, p);
          writes++;
        }
      }
    })();
    const broken = await waitFor(
      "a cycle failed with SNAPSHOT_BROKEN",
      async () => {
        const s = await relationship(siteB);
        return s?.lastFailure?.message.includes("SNAPSHOT_BROKEN") ? s.lastFailure : undefined;
      },
      180_000,
    ).finally(() => (stop = true));
    await writer; // rejects if any guest write failed
    const quietSince = Date.now();
    console.log(`guest writes: ${writes} x 16 MiB, all succeeded; site recorded: ${broken.reason}: ${broken.message}`);
    expect(broken.reason).toBe("ABORTED_BY_SENDER");
    expect(broken.message).toContain(scratchDir);
    for (const [off, p] of pattern) await vm.readVerify(QDEV, p, off, 16 * MiB);
    // The agent's cycles keep cutting off (a pause of milliseconds each): the guest must be
    // running again within a bound, never left paused.
    await waitFor(
      "the guest running (between cut-off pauses)",
      async () => ((await vm.qmp.execute<{ status: string }>("query-status")).status === "running" ? true : undefined),
      10_000,
      20,
    );
    const events = await cli(["events", "vm1", "--dir", siteB, "--json"]);
    expect(events).toContain("SNAPSHOT_BROKEN");

    // The next cycles retry by themselves and carry every change.
    const point = await waitFor(
      "a point cut after the guest stopped writing",
      async () => {
        const s = await relationship(siteB);
        return s?.points.find((p) => Date.parse(p.cutoffAt) > quietSince);
      },
      180_000,
    );
    await agent.kill("SIGTERM");
    await vm.quit();
    const cmp = await compareImages(point.disks[0]!.imagePath, disk, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 420_000);
  it("a nearly full scratch: the agent skips its cycles, the site shows Warning with SCRATCH_SPACE_LOW (one ledger event, not one per cycle); freed, the next point commits byte-identical and only the missed cycles remain counted", async () => {
    // The agent config's cut-off knobs, not the defaults (8 MiB, 5 s), decide.
    const { siteB, scratchDir, disk, vm, agent, agentLog } = await startRig({
      scratchMiB: 16,
      diskBytes: 32 * MiB,
      firstWrite: 4 * MiB,
      vmConfig: { scratchMinFreeMiB: 12, cbwTimeoutSeconds: 3 },
    });
    expect(readFileSync(agentLog, "utf8")).toMatch(/"cbwTimeoutSeconds":3,.*"cut-off taken"/);
    type Status = { relationships: Array<{ health: string; healthMessage: string; healthReasons: Array<{ code: string }> }> };
    const status = async () => (await cliJson<Status>(["status", "vm1", "--dir", siteB])).relationships[0]!;
    await waitFor("health Normal", async () => ((await status()).health === "normal" ? true : undefined), 60_000);

    // Leave 10 MiB free: enough by default, under the configured 12 MiB; then the guest changes something.
    const free = statfsSync(scratchDir).bavail * statfsSync(scratchDir).bsize;
    writeFileSync(join(scratchDir, "filler"), Buffer.alloc(free - 10 * MiB, 1));
    await vm.write(QDEV, 0x22, 8 * MiB, 2 * MiB);
    const warning = await waitFor(
      "health Warning with SCRATCH_SPACE_LOW",
      async () => {
        const r = await status();
        return r.health === "warning" && r.healthMessage.includes("SCRATCH_SPACE_LOW") ? r : undefined;
      },
      60_000,
    );
    console.log(`status while the scratch is full: ${warning.healthMessage}`);
    expect(warning.healthMessage).toContain(scratchDir);
    expect(warning.healthMessage).toMatch(/has (9\.\d|10\.0) MiB free, less than the 12\.0 MiB a cut-off needs/);
    const pointsWhenFull = (await relationship(siteB))!.points.length;
    const skips = () => (readFileSync(agentLog, "utf8").match(/cycle skipped on this host/g) ?? []).length;
    const seen = skips();
    await waitFor("three more cycles skipped", () => (skips() >= seen + 3 ? true : undefined), 60_000);
    expect((await relationship(siteB))!.points.length).toBe(pointsWhenFull);
    type Events = { events: Array<{ type: string; data: { code?: string; message?: string } }> };
    const skippedEvents = (await cliJson<Events>(["events", "vm1", "--dir", siteB, "--all"])).events.filter((e) => e.type === "CycleSkipped");
    expect(skippedEvents).toHaveLength(1);
    expect(skippedEvents[0]!.data.code).toBe("SCRATCH_SPACE_LOW");
    expect(skippedEvents[0]!.data.message).toContain(scratchDir);

    // Space is back: the next cycle commits with every change kept. The skipped slots stay counted
    // as missed while they are in the monitoring window (Hyper-V's 20% rule): health is Normal, or
    // Warning for that reason alone.
    rmSync(join(scratchDir, "filler"));
    const freedAt = Date.now();
    const point = await waitFor("a point cut after the scratch was freed", async () => (await relationship(siteB))?.points.find((p) => Date.parse(p.cutoffAt) > freedAt), 60_000);
    const after = await status();
    const codes = after.healthReasons.map((r) => r.code);
    console.log(`status after the scratch was freed: ${after.healthMessage || "normal"} [${codes.join(",")}]`);
    expect(codes.every((c) => c === "CYCLES_MISSED")).toBe(true);
    expect(after.health).toBe(codes.length === 0 ? "normal" : "warning");
    expect((await relationship(siteB))!.cycleSkipped).toBeUndefined();
    await agent.kill("SIGTERM");
    await vm.quit();
    const cmp = await compareImages(point.disks[0]!.imagePath, disk, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 300_000);
  it("a disk behind a throttle filter: the agent's cycles use copy-before-write under the throttle, commit at the site, and the last point equals the disk byte for byte", async () => {
    const throttled = (disk: string) => [
      "-object",
      "throttle-group,id=tg0,x-bps-total=4000000000",
      "-blockdev",
      `driver=file,node-name=vda-file,filename=${disk}`,
      "-blockdev",
      "driver=qcow2,node-name=vda,file=vda-file",
      "-blockdev",
      "driver=throttle,node-name=vda-thr,throttle-group=tg0,file=vda",
      "-device",
      "virtio-blk-pci,drive=vda-thr,id=vda-dev",
    ];
    const { siteB, disk, vm, agent, agentLog } = await startRig({ scratchMiB: 64, diskBytes: 32 * MiB, firstWrite: 4 * MiB, vmArgs: throttled });
    for (let i = 0; i < 4; i++) {
      const points = (await relationship(siteB))!.points.length;
      await vm.write(QDEV, 0x30 + i, (4 + i * 5) * MiB, 3 * MiB);
      await waitFor(`point ${points + 1}`, async () => ((await relationship(siteB))!.points.length > points ? true : undefined), 60_000);
    }
    expect(readFileSync(agentLog, "utf8")).toMatch(/"graph":\["vda:copy-before-write under throttle vda-thr"\]/);
    const quietSince = Date.now();
    const point = await waitFor("a point cut after the last write", async () => (await relationship(siteB))?.points.find((p) => Date.parse(p.cutoffAt) > quietSince), 60_000);
    await agent.kill("SIGTERM");
    // The graph is as the operator built it.
    const blocks = await vm.qmp.execute<Array<{ qdev?: string; inserted?: { "node-name"?: string; file?: string } }>>("query-block");
    expect(blocks.find((b) => b.qdev === QDEV)?.inserted?.["node-name"]).toBe("vda-thr");
    const nodes = await vm.qmp.execute<Array<{ "node-name": string }>>("query-named-block-nodes", { flat: true });
    expect(nodes.map((n) => n["node-name"]).sort()).toEqual(["vda", "vda-file", "vda-thr"]);
    await vm.quit();
    const cmp = await compareImages(point.disks[0]!.imagePath, disk, { formatA: "qcow2", formatB: "qcow2" });
    expect(cmp.detail).toMatch(/identical/i);
  }, 300_000);

  it("a disk whose device runs in an iothread: no cut-off (QEMU 7.2 would abort the VM), the site shows Warning IOTHREAD_UNSUPPORTED, the VM runs on", async () => {
    const onIothread = (disk: string) => [
      "-object",
      "iothread,id=io0",
      "-blockdev",
      `driver=file,node-name=vda-file,filename=${disk}`,
      "-blockdev",
      "driver=qcow2,node-name=vda,file=vda-file",
      "-device",
      "virtio-blk-pci,drive=vda,id=vda-dev,iothread=io0",
    ];
    const { siteB, vm, agentLog } = await startRig({ scratchMiB: 16, diskBytes: 16 * MiB, firstWrite: 1 * MiB, vmArgs: onIothread, initialPoint: false });
    type Status = { relationships: Array<{ health: string; healthMessage: string; healthReasons: Array<{ code: string }> }> };
    const warning = await waitFor(
      "health Warning with IOTHREAD_UNSUPPORTED",
      async () => {
        const r = (await cliJson<Status>(["status", "vm1", "--dir", siteB]).catch(() => undefined))?.relationships[0];
        return r?.health === "warning" && r.healthMessage.includes("IOTHREAD_UNSUPPORTED") ? r : undefined;
      },
      60_000,
    );
    console.log(`status: ${warning.healthMessage}`);
    expect(warning.healthMessage).toMatch(/runs its I\/O in iothread \/objects\/io0/);
    const skips = () => (readFileSync(agentLog, "utf8").match(/cycle skipped on this host/g) ?? []).length;
    const seen = skips();
    await waitFor("two more cycles skipped", () => (skips() >= seen + 2 ? true : undefined), 60_000);
    expect((await vm.qmp.execute<{ status: string }>("query-status")).status).toBe("running");
    await vm.readVerify(QDEV, 0x11, 0, 1 * MiB);
    expect((await relationship(siteB))!.points).toEqual([]);
  }, 180_000);
});
