/**
 * Shared fixture of the security tests: the two-site setup of `setupTwoSites` with only site B
 * (the replica) running as a real `qreplica site serve` process, and hand-made protocol clients
 * talking to it over mutual TLS on loopback.
 */
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { getSqliteEventStore, loadRelationship, relationshipStream, type RecordedEvent, type RelationshipState } from "../../../src/ledger/index.js";
import { compareImages } from "../../../src/qemu/processes/index.js";
import { addressFile, adminCredentialFiles, loadSiteConfig } from "../../../src/site/siteConfig.js";
import type { ExtentPiece } from "../../../src/transport/index.js";
import { ProtocolClient, encodeChunks, fileCredentials, type DiskSpec } from "../../helpers/protocolClient.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { setupTwoSites, type TwoSites } from "../../helpers/twoSites.js";

export const MiB = 1024 * 1024;

export interface SiteB {
  env: TwoSites;
  tmp: string;
  address: string;
  ledgerPath: string;
  storageRoot: string;
  caFile: string;
  /** agent-a: the primary identity authorized on site B (role agent). */
  agentA: { caFile: string; certFile: string; keyFile: string };
  /** site B's local admin certificate (tls/admin.crt, role admin), as the CLI presents it with --dir. */
  admin: { caFile: string; certFile: string; keyFile: string };
  /** A new Replicate stream; closed by `stop()` if the test does not close it. */
  open(credentials?: grpc.ChannelCredentials): ProtocolClient;
  events(vmId?: string): Promise<RecordedEvent[]>;
  relationship(vmId: string): Promise<RelationshipState>;
  /** Files in the VM's disk directory of site B's storage. */
  storageFiles(vmId: string, diskId: string): string[];
  /** Stops every client and process (site B, its storage daemon, the VM) and removes the tmp dir. */
  stop(): Promise<void>;
}

export async function startSiteB(prefix: string): Promise<SiteB> {
  const tmp = makeTmpDir(prefix);
  const clients: ProtocolClient[] = [];
  let env: TwoSites | undefined;
  try {
    env = await setupTwoSites(tmp.path, { diskBytes: 8 * MiB });
    await env.startSite(env.siteB);
  } catch (err) {
    await env?.stopAll();
    tmp.cleanup();
    throw err;
  }
  const t = env;
  const config = loadSiteConfig(t.siteB);
  const caFile = join(t.caDir, "ca.crt");
  const agentA = { caFile, certFile: join(t.dir, "agent-tls", "agent-a.crt"), keyFile: join(t.dir, "agent-tls", "agent-a.key") };
  const address = readFileSync(addressFile(t.siteB), "utf8").trim();
  const withStore = async <T>(f: (store: ReturnType<typeof getSqliteEventStore>) => Promise<T>): Promise<T> => {
    const store = getSqliteEventStore({ path: config.ledgerPath, create: false });
    try {
      return await f(store);
    } finally {
      await store.close();
    }
  };
  return {
    env: t,
    tmp: tmp.path,
    address,
    ledgerPath: config.ledgerPath,
    storageRoot: config.storageRoot,
    caFile,
    agentA,
    admin: { caFile: config.caFile, ...adminCredentialFiles(t.siteB) },
    open(credentials) {
      const c = new ProtocolClient(address, credentials ?? fileCredentials(agentA));
      clients.push(c);
      return c;
    },
    events(vmId) {
      return withStore((s) => (vmId === undefined ? s.readAll() : s.readStream(relationshipStream(vmId))));
    },
    relationship(vmId) {
      return withStore(async (s) => (await loadRelationship(s, vmId)).state);
    },
    storageFiles(vmId, diskId) {
      const dir = join(config.storageRoot, vmId, diskId);
      return existsSync(dir) ? readdirSync(dir) : [];
    },
    async stop() {
      for (const c of clients.splice(0)) c.close();
      await t.stopAll();
      tmp.cleanup();
    },
  };
}

/** A disk image built in memory next to the chunks that carry it, so a point can be compared byte for byte. */
export class ExpectedDisk {
  readonly bytes: Buffer;
  constructor(
    readonly diskId: string,
    readonly sizeBytes: number,
  ) {
    this.bytes = Buffer.alloc(sizeBytes);
  }

  get spec(): DiskSpec {
    return { diskId: this.diskId, sizeBytes: this.sizeBytes };
  }

  /** Records the pieces as written (the caller sends them) and returns them. */
  apply(pieces: ExtentPiece[]): ExtentPiece[] {
    for (const p of pieces) {
      if (p.kind === "data") p.data.copy(this.bytes, p.offset);
      else this.bytes.fill(0, p.offset, p.offset + p.length);
    }
    return pieces;
  }

  /** Writes the expected bytes to `rawFile` and runs `qemu-img compare` of the point (through its backing chain) against it. */
  async compareWithPoint(imagePath: string, rawFile: string): Promise<{ identical: boolean; detail: string }> {
    writeFileSync(rawFile, this.bytes);
    return compareImages(imagePath, rawFile, { formatA: "qcow2", formatB: "raw" });
  }
}

/** Deterministic bytes that zstd cannot shrink (exercises the NONE codec path). */
export function noise(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b.writeUInt32LE(x, i);
  }
  return b;
}

/** Bytes zstd shrinks well (exercises the ZSTD codec path). */
export function pattern(length: number, byte: number): Buffer {
  const b = Buffer.alloc(length, byte);
  for (let i = 0; i < length; i += 4096) b.write(`block ${i / 4096} of ${byte}`, i);
  return b;
}

/**
 * A full INITIAL cycle of `disk` on an accepted stream: a ZSTD chunk, a NONE chunk, a zero range;
 * returns the CycleAck.
 */
export async function initialCycle(c: ProtocolClient, o: { vmId: string; generation: number; seq: number; disk: ExpectedDisk }) {
  const { disk } = o;
  const half = Math.floor(disk.sizeBytes / 2);
  const pieces = disk.apply([
    { kind: "data", offset: 0, length: MiB, data: pattern(MiB, 0x11) },
    { kind: "data", offset: MiB, length: MiB, data: noise(MiB, o.seq) },
    { kind: "zero", offset: 2 * MiB, length: half - 2 * MiB },
    { kind: "data", offset: half, length: MiB, data: noise(MiB, o.seq + 100) },
  ]);
  const chunks = encodeChunks(pieces, { generation: o.generation, seq: o.seq, diskId: disk.diskId });
  await c.sendCycle({ vmId: o.vmId, generation: o.generation, seq: o.seq, kind: "initial", disks: [disk.spec] }, chunks);
  return c.expect("cycleAck");
}
