import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { QreplicaError } from "../../src/common/errors.js";
import { ID_PATTERN, InvalidIdError, requireId, type IdKind } from "../../src/model/index.js";
// The spec model only (pure validation), not the site server.
import { validateVmSpec, type VmSpec } from "../../src/site/launcher/vmSpec.js";
import { DEFAULT_SCRATCH_MIN_FREE_BYTES } from "../capture/scratchSpace.js";
import { DEFAULT_CBW_TIMEOUT_SECONDS } from "../capture/vmCapture.js";
import { parseLibvirtVm, type LibvirtVmConfig } from "./libvirtConfig.js";

export interface AgentVmConfig {
  id: string;
  /** A libvirt domain: captured through libvirt's backup API; qmpSocket, nbdSocket and disks are then unused. */
  libvirt?: LibvirtVmConfig;
  qmpSocket: string;
  /** Where QEMU's NBD server listens (started there by the agent if QEMU has none). */
  nbdSocket: string;
  guestAgentSocket?: string;
  disks: Array<{ id: string; node: string }>;
  /**
   * Where cut-offs keep the old data the guest overwrites while a cycle is read (default
   * `<stateDir>/scratch`). Fast local storage with room for what the guest may rewrite in a cycle.
   */
  scratchDir?: string;
  /**
   * Longest a guest write waits for its copy of old data into the scratch (QEMU's copy-before-write
   * `cbw-timeout`); past it the cycle's snapshot breaks, never the write. Agent-wide default 5 s,
   * overridable per VM.
   */
  cbwTimeoutSeconds: number;
  /**
   * A cut-off is skipped (nothing cut, every change kept, the site told SCRATCH_SPACE_LOW) while
   * the scratch filesystem has less than this free. Agent-wide default 8 MiB, overridable per VM.
   */
  scratchMinFreeBytes: number;
  /** host:port of the replica site's gRPC endpoint. */
  replicaSite: string;
  /**
   * The replica site's id, which its certificate must carry as its identity (CN): the agent refuses
   * any other server of the deployment's CA, so a DNS or config mistake cannot send the VM's disks
   * to the wrong site.
   */
  replicaSiteId: string;
  intervalSeconds: number;
  compressionLevel: number;
  /**
   * Checksum per chunk: "zstd-frame" (default; the frame's own XXH64, nearly free) or "sha256"
   * (a cryptographic digest on both sides, at about 1.4 GB/s per core).
   */
  chunkChecksum: "zstd-frame" | "sha256";
  /** How the replica site launches this VM on failover; sent to the site with every Hello. */
  spec?: VmSpec;
  /**
   * After change tracking is lost (QEMU or the host crashed): "automatic" (default) resyncs by
   * comparison at once; "manual" waits for `qreplica resync VM` on the replica site.
   */
  resync: "automatic" | "manual";
  /**
   * The digest a resync compares 64 KiB chunks with: "blake3" (default; ~3x SHA-256's speed, and
   * what the replica's chunk index holds) or "sha256" (FIPS-approved; the replica then reads and
   * hashes its side too).
   */
  resyncDigest: "blake3" | "sha256";
  /**
   * The policy to replicate this VM under, by name: bound on the replica site at the first Hello
   * when the site has no binding for the VM yet (a binding made on the site wins).
   */
  policy?: string;
  /** Generation to present before the site has told one (a reverse replication starts at the failover's). */
  generation?: number;
}

export interface AgentConfig {
  /** This primary site's id, sent in Hello. The agent's identity is its certificate. */
  siteId: string;
  stateDir: string;
  tls: { caFile: string; certFile: string; keyFile: string };
  vms: AgentVmConfig[];
  /**
   * Most cycles (initial replications and resyncs included) this agent runs at once, over all its
   * VMs: a fleet on one host must not saturate it. Default 4; waiting VMs go earliest-due first and
   * a slot that passes while waiting is counted missed.
   */
  maxCyclesInFlight: number;
  /**
   * host:port of the Prometheus /metrics endpoint (plain HTTP, no authentication); absent: off.
   * Keep it on loopback (e.g. 127.0.0.1:9465): it names the host's VMs.
   */
  metricsListen?: string;
}

export class AgentConfigError extends QreplicaError {
  readonly code = "AGENT_CONFIG_INVALID" as const;
  constructor(
    readonly path: string,
    detail: string,
    options?: { cause?: unknown },
  ) {
    super(`agent config ${path}: ${detail}`, options);
  }
}

/** Reads the agent's YAML (or JSON) config; relative paths are relative to the file. */
export function loadAgentConfig(path: string): AgentConfig {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(path, "utf8"));
  } catch (err) {
    throw new AgentConfigError(path, (err as NodeJS.ErrnoException).code === "ENOENT" ? "file not found" : "not valid YAML/JSON", { cause: err });
  }
  const base = dirname(resolve(path));
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const obj = asObject(raw, path, "the top level");
  const tls = asObject(obj.tls, path, "tls");
  const vmsRaw = obj.vms;
  if (!Array.isArray(vmsRaw) || vmsRaw.length === 0) throw new AgentConfigError(path, "'vms' must list at least one VM");
  // Cut-off safety knobs: agent-wide, each VM may override (a VM on slower scratch storage, say).
  const cbwTimeoutDefault = cbwTimeout(obj.cbwTimeoutSeconds ?? DEFAULT_CBW_TIMEOUT_SECONDS, path, "cbwTimeoutSeconds");
  const minFreeDefault = minFreeMiB(obj.scratchMinFreeMiB ?? DEFAULT_SCRATCH_MIN_FREE_MIB, path, "scratchMinFreeMiB");
  const vms = vmsRaw.map((v, i): AgentVmConfig => {
    const vm = asObject(v, path, `vms[${i}]`);
    // Only a string id is shown: String() of a hostile mapping (e.g. `id: { toString: 1 }`) throws.
    const where = `vms[${i}] (${typeof vm.id === "string" ? vm.id : "?"})`;
    const libvirt = vm.libvirt === undefined ? undefined : parseLibvirtVm(vm.libvirt, `${where}.libvirt`);
    if (libvirt && !libvirt.ok) throw new AgentConfigError(path, libvirt.message);
    if (libvirt) {
      // libvirt's domain XML names the disks and libvirt holds the monitor: these would only mislead.
      for (const k of ["qmpSocket", "nbdSocket", "disks", "guestAgentSocket"]) {
        if (vm[k] !== undefined) throw new AgentConfigError(path, `${where}.${k}: not used with ${where}.libvirt (the agent finds the disks in the domain XML); remove it`);
      }
    }
    const disks = libvirt ? [] : vm.disks;
    if (!libvirt && (!Array.isArray(disks) || disks.length === 0)) throw new AgentConfigError(path, `${where}.disks must list the VM's disks as {id, node}`);
    return {
      id: id("VM id", vm.id, path, `vms[${i}].id`),
      ...(libvirt?.ok ? { libvirt: libvirt.value } : {}),
      qmpSocket: libvirt ? "" : abs(str(vm.qmpSocket, path, `${where}.qmpSocket`)),
      nbdSocket: libvirt ? "" : abs(str(vm.nbdSocket, path, `${where}.nbdSocket`)),
      guestAgentSocket: vm.guestAgentSocket === undefined ? undefined : abs(str(vm.guestAgentSocket, path, `${where}.guestAgentSocket`)),
      disks: (disks as unknown[]).map((d, j) => {
        const disk = asObject(d, path, `${where}.disks[${j}]`);
        return { id: id("disk id", disk.id, path, `${where}.disks[${j}].id`), node: str(disk.node, path, `${where}.disks[${j}].node`) };
      }),
      scratchDir: vm.scratchDir === undefined ? undefined : abs(str(vm.scratchDir, path, `${where}.scratchDir`)),
      cbwTimeoutSeconds: vm.cbwTimeoutSeconds === undefined ? cbwTimeoutDefault : cbwTimeout(vm.cbwTimeoutSeconds, path, `${where}.cbwTimeoutSeconds`),
      scratchMinFreeBytes: (vm.scratchMinFreeMiB === undefined ? minFreeDefault : minFreeMiB(vm.scratchMinFreeMiB, path, `${where}.scratchMinFreeMiB`)) * MiB,
      replicaSite: str(vm.replicaSite, path, `${where}.replicaSite`),
      replicaSiteId: replicaSiteIdOf(vm.replicaSiteId, path, where),
      intervalSeconds: num(vm.intervalSeconds ?? 30, path, `${where}.intervalSeconds`),
      compressionLevel: num(vm.compressionLevel ?? 1, path, `${where}.compressionLevel`),
      chunkChecksum: oneOf(vm.chunkChecksum ?? "zstd-frame", ["zstd-frame", "sha256"] as const, path, `${where}.chunkChecksum`),
      resync: oneOf(vm.resync ?? "automatic", ["automatic", "manual"] as const, path, `${where}.resync`),
      resyncDigest: oneOf(vm.resyncDigest ?? "blake3", ["blake3", "sha256"] as const, path, `${where}.resyncDigest`),
      spec: vm.spec === undefined ? undefined : specOf(vm.spec, path, `${where}.spec`),
      generation: vm.generation === undefined ? undefined : num(vm.generation, path, `${where}.generation`),
      ...(vm.policy === undefined ? {} : { policy: policyName(vm.policy, path, `${where}.policy`) }),
    };
  });
  return {
    siteId: str(obj.siteId, path, "siteId"),
    stateDir: abs(str(obj.stateDir, path, "stateDir")),
    tls: { caFile: abs(str(tls.caFile, path, "tls.caFile")), certFile: abs(str(tls.certFile, path, "tls.certFile")), keyFile: abs(str(tls.keyFile, path, "tls.keyFile")) },
    vms,
    maxCyclesInFlight: maxInFlight(obj.maxCyclesInFlight ?? DEFAULT_MAX_CYCLES_IN_FLIGHT, path),
    ...(obj.metricsListen === undefined ? {} : { metricsListen: str(obj.metricsListen, path, "metricsListen") }),
  };
}

const DEFAULT_MAX_CYCLES_IN_FLIGHT = 4;

function maxInFlight(v: unknown, path: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 256) {
    throw new AgentConfigError(
      path,
      `maxCyclesInFlight must be a whole number from 1 to 256, got ${JSON.stringify(v)}: it bounds how many VMs of this host replicate at once; the default is ${DEFAULT_MAX_CYCLES_IN_FLIGHT}`,
    );
  }
  return v;
}

const MiB = 1024 * 1024;
const DEFAULT_SCRATCH_MIN_FREE_MIB = DEFAULT_SCRATCH_MIN_FREE_BYTES / MiB;
/** A guest write must never wait long for us; past a minute guests start to time out their I/O. */
const MAX_CBW_TIMEOUT_SECONDS = 60;

function cbwTimeout(v: unknown, path: string, what: string): number {
  // QEMU reads 0 as "no limit": a guest write could then wait on a stuck scratch for ever.
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > MAX_CBW_TIMEOUT_SECONDS) {
    throw new AgentConfigError(
      path,
      `${what} must be a whole number of seconds from 1 to ${MAX_CBW_TIMEOUT_SECONDS}, got ${JSON.stringify(v)}: it bounds how long a guest write may wait ` +
        `for its copy into the scratch (0, no bound, is refused); the default is ${DEFAULT_CBW_TIMEOUT_SECONDS}`,
    );
  }
  return v;
}

function minFreeMiB(v: unknown, path: string, what: string): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > 1024 * 1024) {
    throw new AgentConfigError(
      path,
      `${what} must be a whole number of MiB from 1 to 1048576, got ${JSON.stringify(v)}: a cut-off is skipped while the scratch filesystem ` +
        `has less than this free; the default is ${DEFAULT_SCRATCH_MIN_FREE_MIB}`,
    );
  }
  return v;
}

/** Ids become state file names and QMP names: one that is not an id is refused before anything is written. */
function id(kind: IdKind, v: unknown, path: string, what: string): string {
  const text = str(v, path, what);
  try {
    return requireId(kind, text);
  } catch (err) {
    if (err instanceof InvalidIdError) throw new AgentConfigError(path, `${what}: ${err.message}`, { cause: err });
    throw err;
  }
}

function policyName(v: unknown, path: string, what: string): string {
  if (typeof v === "string" && ID_PATTERN.test(v)) return v;
  throw new AgentConfigError(path, `${what} must name a policy applied on the replica site (1-64 letters, digits, '.', '_' or '-', e.g. gold), got ${JSON.stringify(v)}`);
}

function replicaSiteIdOf(v: unknown, path: string, where: string): string {
  if (typeof v === "string" && v !== "") return v;
  throw new AgentConfigError(
    path,
    `${where}.replicaSiteId is missing: set it to the replica site's id (the --name given to 'qreplica site init' there, e.g. replicaSiteId: site-b); ` +
      "the agent sends the VM's disks only to a server whose certificate carries that identity",
  );
}

function specOf(v: unknown, path: string, what: string): VmSpec {
  try {
    return validateVmSpec(v);
  } catch (err) {
    throw new AgentConfigError(path, `${what}: ${(err as Error).message}`, { cause: err });
  }
}

function asObject(v: unknown, path: string, what: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new AgentConfigError(path, `${what} must be a mapping`);
  return v as Record<string, unknown>;
}

function str(v: unknown, path: string, what: string): string {
  if (typeof v !== "string" || v === "") throw new AgentConfigError(path, `${what} must be a non-empty string`);
  return v;
}

function num(v: unknown, path: string, what: string): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) throw new AgentConfigError(path, `${what} must be a non-negative number`);
  return v;
}

function oneOf<const T extends readonly string[]>(v: unknown, allowed: T, path: string, what: string): T[number] {
  if (typeof v !== "string" || !allowed.includes(v)) throw new AgentConfigError(path, `${what} must be one of ${allowed.join(", ")}, got ${JSON.stringify(v)}`);
  return v as T[number];
}
