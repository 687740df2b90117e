/**
 * The libvirt capture on a real libvirtd (private, started by the test) and a TCG domain running
 * the counter guest on a qcow2 disk, with writes injected through the guest's disk device:
 * an initial read and incremental cycles rebuild the point-in-time export byte for byte (and,
 * with the domain held paused from a cut-off to a clean stop, the disk itself); undefine + define
 * loses libvirt's checkpoints and the capture redefines them and goes on incrementally; kill -9 of
 * QEMU is reported as resync required. libvirtd not starting fails the test with the reason.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LibvirtCapture } from "../../../replica-agent/capture/libvirt/libvirtCapture.js";
import type { CaptureCycle } from "../../../replica-agent/capture/index.js";
import { compareImages } from "../../../src/qemu/processes/index.js";
import { applyExtentsToRaw } from "../../helpers/applyExtents.js";
import { PrivateLibvirt, type LibvirtTestDomain } from "../../helpers/libvirt.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const MiB = 1024 * 1024;
let lv: PrivateLibvirt | undefined;
let dom: LibvirtTestDomain;
let dir: string;
let cleanup: (() => void) | undefined;

beforeAll(async () => {
  const tmp = makeTmpDir("qr-libvirt-");
  dir = tmp.path;
  cleanup = tmp.cleanup;
  lv = await PrivateLibvirt.start(join(dir, "libvirt"));
  dom = await lv.defineCounterDomain(`qr-cap-${process.pid}`, join(dir, "disks"));
  await dom.start();
}, 120_000);

afterAll(() => {
  lv?.stop();
  if (!process.env.QR_KEEP) cleanup?.();
});

const open = () => LibvirtCapture.open({ vmId: "vm1", domain: dom.name, uri: lv!.uri, stateDir: join(dir, "agent-state") });
const replica = () => join(dir, "replica.raw");

/**
 * Copies the cycle's point-in-time export as the oracle, injects writes while the cycle is read
 * (they must not show), applies the cycle to the replica and checks it against the oracle.
 */
async function shipAndCheck(capture: LibvirtCapture, cycle: CaptureCycle, n: number, opts: { writeDuringRead?: boolean } = {}): Promise<void> {
  const oracle = join(dir, `oracle-${n}.raw`);
  const socket = join(capture.scratchDir, "vm1.backup.sock");
  execFileSync("nbdcopy", [`nbd+unix:///hda?socket=${socket}`, oracle]);
  if (opts.writeDuringRead !== false) await dom.write(`write -P 0x${(0x40 + n).toString(16)} ${(2 + n) * MiB} 256k`);
  for (const d of cycle.disks) await applyExtentsToRaw(replica(), d.sizeAtCutoff, d.extents());
  await cycle.confirm();
  const cmp = await compareImages(replica(), oracle, { formatA: "raw", formatB: "raw" });
  expect(cmp.identical, `cycle ${n}: ${cmp.detail}`).toBe(true);
}

describe("libvirt capture (checkpoints + pull-mode backup over NBD)", () => {
  it("initial read and 3 incremental cycles rebuild each cut-off; undefine + define keeps cycles incremental", async () => {
    let capture = await open();
    expect(capture.report?.status).toBe("not-enabled");
    expect(capture.domainDisks.map((d) => d.target)).toEqual(["hda"]);
    await dom.write(`write -P 0x11 ${8 * MiB} 1M`);
    const initial = await capture.enable();
    expect(initial.kind).toBe("full");
    await shipAndCheck(capture, initial, 0);
    for (let n = 1; n <= 3; n++) {
      await dom.write(`write -P 0x${(0x20 + n).toString(16)} ${(10 + n) * MiB} 128k`);
      const c = await capture.beginCycle();
      expect(c.kind).toBe("incremental");
      // Only what changed since the last checkpoint (the writes and the guest's counter), not the disk.
      expect(c.disks[0]!.dirtyBytes).toBeLessThan(4 * MiB);
      await shipAndCheck(capture, c, n);
      expect(c.disks[0]!.stats.dataBytes).toBeLessThan(4 * MiB);
    }

    // Paused from the cut-off to a clean stop: the replica must equal the disk file itself.
    await lv!.virsh.run(["suspend", dom.name]);
    const last = await capture.beginCycle();
    await shipAndCheck(capture, last, 4, { writeDuringRead: false });
    await dom.stopGracefully();
    const disk = await compareImages(replica(), dom.diskPath, { formatA: "raw", formatB: "qcow2" });
    expect(disk.identical, disk.detail).toBe(true);

    // libvirt forgets checkpoints with the domain's definition; the bitmap stays in the qcow2.
    await lv!.virsh.run(["undefine", dom.name, "--checkpoints-metadata"]);
    await dom.define();
    expect((await lv!.virsh.run(["checkpoint-list", dom.name, "--name"])).trim()).toBe("");
    await dom.start();
    capture = await open();
    expect(capture.report?.status).toBe("ok");
    expect((await lv!.virsh.run(["checkpoint-list", dom.name, "--name"])).trim()).toBe("qreplica-5");
    await dom.write(`write -P 0x77 ${20 * MiB} 64k`);
    const after = await capture.beginCycle();
    expect(after.kind).toBe("incremental");
    expect(after.disks[0]!.dirtyBytes).toBeLessThan(4 * MiB);
    await shipAndCheck(capture, after, 6);
  }, 240_000);

  it("kill -9 of the domain's QEMU: the capture reports resync required, then a full export is read", async () => {
    await dom.crash();
    await dom.start();
    const capture = await open();
    expect(capture.report?.status).toBe("resync-required");
    expect(capture.report?.disks[0]?.reason).toMatch(/inconsistent or missing/);
    const resync = await capture.enable();
    expect(resync.kind).toBe("full");
    await shipAndCheck(capture, resync, 7);
    await dom.write(`write -P 0x78 ${21 * MiB} 64k`);
    const next = await capture.beginCycle();
    expect(next.kind).toBe("incremental");
    await shipAndCheck(capture, next, 8);
  }, 240_000);
});
