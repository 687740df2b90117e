import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { QreplicaError } from "../../src/common/errors.js";
import { z } from "zod";
import { field, hostPortField, intIn, numberIn, oneOf, problemsText, schemaProblems, show, text, type SchemaProblem } from "../../src/common/configSchema.js";
import { ID_PATTERN, isValidId, type IdKind, VmSpecError, validateVmSpec, type VmSpec } from "../../src/model/index.js";
import { DEFAULTS } from "../../src/policy/schema.js";
import { DEFAULT_SCRATCH_MIN_FREE_BYTES } from "../capture/scratchSpace.js";
import { DEFAULT_CBW_TIMEOUT_SECONDS } from "../capture/vmCapture.js";
import { DEFAULT_GROUP_JOIN_TIMEOUT_MS } from "../capture/groupCutoff.js";
import { LibvirtVmSchema, type LibvirtVmConfig } from "./libvirtConfig.js";

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
  /**
   * Set by a site for the agent it starts when a VM that failed over there goes on replicating to
   * the VM's extended replica (A -> B -> C, the VM failed over at B): why `generation` is above the
   * replica's (Hello.upstream_failover). Not for hand-written configs.
   */
  upstreamFailover?: string;
  /**
   * How the first point is made: "now" (default: a full copy over the network at once), "at" (the
   * same, held until a time; a site policy's initialReplication wins), "export" (written to a
   * directory, carried on media and imported at the replica site: no disk data over the network),
   * "seed" (wait until the replica site holds a seed, `qreplica seed`; only differing chunks travel).
   */
  initialReplication: InitialReplicationChoice;
  /**
   * The consistency group the VM belongs to (config `groups:`): its cut-offs are taken in one
   * pause with the other members' (see capture/groupCutoff.ts).
   */
  group?: AgentGroupConfig;
}

export interface AgentGroupConfig {
  id: string;
  /** Every member's VM id, in config order. */
  members: string[];
  /** How long a member ready to cut waits for the others before the group cuts without them. */
  joinTimeoutMs: number;
}

export type InitialReplicationChoice = { kind: "now" } | { kind: "at"; at: Date } | { kind: "export"; dir: string } | { kind: "seed" };

export interface AgentConfig {
  /** This primary site's id, sent in Hello. The agent's identity is its certificate. */
  siteId: string;
  stateDir: string;
  /** crlFile: the deployment CA's revocation list; a replica site whose certificate it lists is refused. */
  tls: { caFile: string; certFile: string; keyFile: string; crlFile?: string };
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
    options?: { cause?: unknown; problems?: readonly SchemaProblem[] },
  ) {
    super(`agent config ${path}: ${detail}`, options);
    this.problems = options?.problems ?? [];
  }
  /** Every problem found, each with its field's path (`vms[0].compressionLevel`) and the fix. */
  readonly problems: readonly SchemaProblem[];
}

const DEFAULT_MAX_CYCLES_IN_FLIGHT = 4;
const MiB = 1024 * 1024;
const DEFAULT_SCRATCH_MIN_FREE_MIB = DEFAULT_SCRATCH_MIN_FREE_BYTES / MiB;
/** A guest write must never wait long for us; past a minute guests start to time out their I/O. */
const MAX_CBW_TIMEOUT_SECONDS = 60;
/** A month: a longer interval is a config mistake (seconds read as minutes), not a schedule. */
const MAX_INTERVAL_SECONDS = 31 * 86_400;

const path = (what: string) => text(`give the ${what} (relative paths are relative to the config file)`);
const id = (kind: IdKind, example: string) =>
  field<string>((v) =>
    isValidId(v)
      ? { value: v }
      : {
          error: `${v === undefined ? "is missing" : `${show(v)} is not a valid ${kind}`}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. ${example})`,
        },
  );
// QEMU reads 0 as "no limit": a guest write could then wait on a stuck scratch for ever.
const cbwTimeout = intIn(
  1,
  MAX_CBW_TIMEOUT_SECONDS,
  `seconds a guest write may wait for its copy into the scratch (0, no bound, is refused); the default is ${DEFAULT_CBW_TIMEOUT_SECONDS}`,
);
const scratchMinFreeMiB = intIn(1, 1024 * 1024, `MiB: a cut-off is skipped while the scratch filesystem has less than this free; the default is ${DEFAULT_SCRATCH_MIN_FREE_MIB}`);

const vmSchema = z
  .strictObject({
    id: id("VM id", "web1"),
    libvirt: LibvirtVmSchema.optional(),
    qmpSocket: path("QEMU's QMP socket").optional(),
    nbdSocket: path("NBD socket path").optional(),
    guestAgentSocket: path("qemu-ga socket").optional(),
    disks: z
      .array(z.strictObject({ id: id("disk id", "vda"), node: text("give the disk's QEMU block node name (query-named-block-nodes), e.g. vda") }))
      .min(1, "must list the VM's disks as { id, node }")
      .optional(),
    scratchDir: path("scratch directory").optional(),
    cbwTimeoutSeconds: cbwTimeout.optional(),
    scratchMinFreeMiB: scratchMinFreeMiB.optional(),
    replicaSite: hostPortField(1, "replica.example.org:7443 (the replica site's run/site.address)"),
    replicaSiteId: text(
      "set it to the replica site's id (the --name given to 'qreplica site init' there, e.g. replicaSiteId: site-b); the agent sends the VM's disks only to a server whose certificate carries that identity",
    ),
    intervalSeconds: numberIn(1, MAX_INTERVAL_SECONDS, `seconds between cycles when no policy says otherwise; the default is ${DEFAULTS.frequencySeconds}`).optional(),
    compressionLevel: intIn(1, 19, `a zstd level: 1 (fastest) to 19 (smallest); the default is ${DEFAULTS.compressionLevel}`).optional(),
    chunkChecksum: oneOf(["zstd-frame", "sha256"] as const).optional(),
    resync: oneOf(["automatic", "manual"] as const).optional(),
    resyncDigest: oneOf(["blake3", "sha256"] as const).optional(),
    spec: field<VmSpec>((v) => {
      try {
        return { value: validateVmSpec(v) };
      } catch (err) {
        if (err instanceof VmSpecError) return { error: `${err.problems.join("; ")} (the spec: format is in the README)` };
        throw err;
      }
    }).optional(),
    generation: intIn(0, Number.MAX_SAFE_INTEGER, "the generation a reverse replication starts at (the failover's); leave it out otherwise").optional(),
    upstreamFailover: z.string().min(1).max(500).optional(),
    initialReplication: z
      .union(
        [
          z.literal(["now", "seed"]),
          z.strictObject({ at: z.iso.datetime({ offset: true, error: 'write a time with its zone, e.g. { at: "2026-12-05T02:00:00Z" }' }) }),
          z.strictObject({ export: path("export directory (where the initial copy is written, e.g. a mounted disk)") }),
        ],
        { error: 'write now, seed, { at: "2026-12-05T02:00:00Z" } or { export: /media/usb/web1 }' },
      )
      .optional(),
    policy: field<string>((v) =>
      typeof v === "string" && ID_PATTERN.test(v)
        ? { value: v }
        : { error: `${show(v)} is not a policy name; name a policy applied on the replica site (1-64 letters, digits, '.', '_' or '-', e.g. gold)` },
    ).optional(),
  })
  .superRefine((vm, ctx) => {
    if (vm.libvirt) {
      // libvirt's domain XML names the disks and libvirt holds the monitor: these would only mislead.
      for (const k of ["qmpSocket", "nbdSocket", "disks", "guestAgentSocket"] as const) {
        if (vm[k] !== undefined) ctx.addIssue({ code: "custom", path: [k], message: "not used with libvirt: (the agent finds the disks in the domain XML); remove it" });
      }
      if (vm.cbwTimeoutSeconds !== undefined)
        ctx.addIssue({
          code: "custom",
          path: ["cbwTimeoutSeconds"],
          message:
            "not used with libvirt: libvirt's backup API sets no copy-before-write timeout (the agent ends the backup job when the scratch runs low instead, see scratchMinFreeMiB); remove it",
        });
      return;
    }
    if (vm.qmpSocket === undefined)
      ctx.addIssue({ code: "custom", path: ["qmpSocket"], message: "is missing: give QEMU's QMP socket, or a libvirt: { domain } block for a libvirt-managed VM" });
    if (vm.nbdSocket === undefined) ctx.addIssue({ code: "custom", path: ["nbdSocket"], message: "is missing: give the NBD socket path" });
    if (vm.disks === undefined) ctx.addIssue({ code: "custom", path: ["disks"], message: "is missing: list the VM's disks as { id, node }" });
  });

const groupSchema = z.strictObject({
  id: id("group id", "app1"),
  vms: z.array(text("name a VM of this config's vms: by its id")).min(2, "must list at least two VM ids of this config (a group of one is just a VM)"),
  joinTimeoutSeconds: numberIn(
    0.1,
    600,
    `seconds a member ready to cut waits for the other members before the group cuts without them; the default is ${DEFAULT_GROUP_JOIN_TIMEOUT_MS / 1000}`,
  ).optional(),
});

export const agentConfigSchema = z
  .strictObject({
    siteId: text("give this primary site's id, e.g. siteId: site-a"),
    stateDir: path("state directory"),
    tls: z.strictObject({
      caFile: path("CA certificate file"),
      certFile: path("agent's certificate file"),
      keyFile: path("agent's key file"),
      crlFile: path("revocation list file (the CA's crl.pem, 'qreplica pki crl')").optional(),
    }),
    vms: z.array(vmSchema).min(1, "must list at least one VM"),
    maxCyclesInFlight: intIn(1, 256, `it bounds how many VMs of this host replicate at once; the default is ${DEFAULT_MAX_CYCLES_IN_FLIGHT}`).optional(),
    metricsListen: hostPortField(0, "127.0.0.1:9465").optional(),
    // Cut-off safety knobs: agent-wide, each VM may override (a VM on slower scratch storage, say).
    cbwTimeoutSeconds: cbwTimeout.optional(),
    scratchMinFreeMiB: scratchMinFreeMiB.optional(),
    /** Consistency groups: VMs whose cut-offs are taken together (one pause, one group point). */
    groups: z.array(groupSchema).optional(),
  })
  .superRefine((c, ctx) => {
    const vms = new Map(c.vms.map((vm) => [vm.id, vm]));
    const inGroup = new Map<string, string>();
    const groupIds = new Set<string>();
    c.groups?.forEach((g, gi) => {
      if (groupIds.has(g.id)) ctx.addIssue({ code: "custom", path: ["groups", gi, "id"], message: `group ${g.id} is listed twice: give each group one entry` });
      groupIds.add(g.id);
      g.vms.forEach((vmId, vi) => {
        const at = ["groups", gi, "vms", vi];
        const vm = vms.get(vmId);
        if (!vm) return ctx.addIssue({ code: "custom", path: at, message: `names VM ${vmId}, which is not in vms: add it there or remove it from the group` });
        const other = inGroup.get(vmId);
        if (other !== undefined) return ctx.addIssue({ code: "custom", path: at, message: `VM ${vmId} is already in group ${other}: a VM belongs to one group at most` });
        inGroup.set(vmId, g.id);
        if (vm.libvirt) ctx.addIssue({ code: "custom", path: at, message: `VM ${vmId} is a libvirt domain: groups need the QMP capture (qmpSocket); remove it from the group` });
        const first = vms.get(g.vms[0]!);
        if (first && (vm.replicaSite !== first.replicaSite || vm.replicaSiteId !== first.replicaSiteId))
          ctx.addIssue({
            code: "custom",
            path: at,
            message: `VM ${vmId} replicates to another site than ${first.id}: a group's members replicate to one site (its group points are kept there)`,
          });
      });
      const max = c.maxCyclesInFlight ?? DEFAULT_MAX_CYCLES_IN_FLIGHT;
      if (g.vms.length > max)
        ctx.addIssue({
          code: "custom",
          path: ["groups", gi, "vms"],
          message: `${g.vms.length} members, but maxCyclesInFlight is ${max}: the members cut together, so set maxCyclesInFlight to at least ${g.vms.length}`,
        });
    });
  });

function initialChoice(v: z.infer<typeof vmSchema>["initialReplication"], abs: (p: string) => string): InitialReplicationChoice {
  if (v === undefined || v === "now") return { kind: "now" };
  if (v === "seed") return { kind: "seed" };
  return "at" in v ? { kind: "at", at: new Date(v.at) } : { kind: "export", dir: abs(v.export) };
}

/** Reads the agent's YAML (or JSON) config; relative paths are relative to the file. */
export function loadAgentConfig(file: string): AgentConfig {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, "utf8"));
  } catch (err) {
    throw new AgentConfigError(file, (err as NodeJS.ErrnoException).code === "ENOENT" ? "file not found" : `not valid YAML/JSON: ${(err as Error).message.split("\n")[0]}`, {
      cause: err,
    });
  }
  return agentConfigFrom(raw, file);
}

/** A parsed document into the agent's config, or AgentConfigError listing every problem with its path. */
export function agentConfigFrom(raw: unknown, file: string): AgentConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new AgentConfigError(file, `the top level must be a mapping with siteId, stateDir, tls and vms, got ${show(raw)}`);
  }
  const r = agentConfigSchema.safeParse(raw, { reportInput: true });
  if (!r.success) {
    const problems = schemaProblems(agentConfigSchema, r.error);
    throw new AgentConfigError(file, problemsText(problems), { problems });
  }
  const c = r.data;
  const base = dirname(resolve(file));
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(base, p));
  const cbwDefault = c.cbwTimeoutSeconds ?? DEFAULT_CBW_TIMEOUT_SECONDS;
  const minFreeDefault = c.scratchMinFreeMiB ?? DEFAULT_SCRATCH_MIN_FREE_MIB;
  const groupOf = new Map<string, AgentGroupConfig>();
  for (const g of c.groups ?? []) {
    const group: AgentGroupConfig = { id: g.id, members: [...g.vms], joinTimeoutMs: Math.round((g.joinTimeoutSeconds ?? DEFAULT_GROUP_JOIN_TIMEOUT_MS / 1000) * 1000) };
    for (const vmId of g.vms) groupOf.set(vmId, group);
  }
  const vms = c.vms.map(
    (vm): AgentVmConfig => ({
      id: vm.id,
      ...(vm.libvirt ? { libvirt: vm.libvirt } : {}),
      qmpSocket: vm.qmpSocket === undefined ? "" : abs(vm.qmpSocket),
      nbdSocket: vm.nbdSocket === undefined ? "" : abs(vm.nbdSocket),
      guestAgentSocket: vm.guestAgentSocket === undefined ? undefined : abs(vm.guestAgentSocket),
      disks: (vm.disks ?? []).map((d) => ({ id: d.id, node: d.node })),
      scratchDir: vm.scratchDir === undefined ? undefined : abs(vm.scratchDir),
      cbwTimeoutSeconds: vm.cbwTimeoutSeconds ?? cbwDefault,
      scratchMinFreeBytes: (vm.scratchMinFreeMiB ?? minFreeDefault) * MiB,
      replicaSite: vm.replicaSite,
      replicaSiteId: vm.replicaSiteId,
      intervalSeconds: vm.intervalSeconds ?? DEFAULTS.frequencySeconds,
      compressionLevel: vm.compressionLevel ?? DEFAULTS.compressionLevel,
      chunkChecksum: vm.chunkChecksum ?? "zstd-frame",
      resync: vm.resync ?? "automatic",
      resyncDigest: vm.resyncDigest ?? "blake3",
      spec: vm.spec,
      generation: vm.generation,
      ...(vm.upstreamFailover === undefined ? {} : { upstreamFailover: vm.upstreamFailover }),
      initialReplication: initialChoice(vm.initialReplication, abs),
      ...(vm.policy === undefined ? {} : { policy: vm.policy }),
      ...(groupOf.has(vm.id) ? { group: groupOf.get(vm.id)! } : {}),
    }),
  );
  return {
    siteId: c.siteId,
    stateDir: abs(c.stateDir),
    tls: { caFile: abs(c.tls.caFile), certFile: abs(c.tls.certFile), keyFile: abs(c.tls.keyFile), ...(c.tls.crlFile ? { crlFile: abs(c.tls.crlFile) } : {}) },
    vms,
    maxCyclesInFlight: c.maxCyclesInFlight ?? DEFAULT_MAX_CYCLES_IN_FLIGHT,
    ...(c.metricsListen === undefined ? {} : { metricsListen: c.metricsListen }),
  };
}
