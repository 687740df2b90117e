import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type { Logger } from "../../common/logger.js";
import { Virsh } from "../../qemu/libvirt/virsh.js";
import { validateVmSpec } from "../../model/vmSpec.js";
import { VmLaunchError } from "./errors.js";
import { domainXml, launchOwnerOf } from "./libvirtDomainXml.js";
import type { LaunchRequest, SiteVm, VmLauncher, VmRef } from "./port.js";

export interface LibvirtLauncherOptions {
  /** The libvirt connection, e.g. `qemu:///system`. */
  uri: string;
  /** Domains are named `qreplica-<siteId>-<name>`: the prefix a restarted site looks for. */
  siteId: string;
  /** Recorded in every domain's metadata: a domain of another site with the same prefix is left alone. */
  siteDir: string;
  /** `auto`: KVM when libvirt offers it for x86_64, TCG (`<domain type='qemu'>`) otherwise. */
  accel: "auto" | "kvm" | "tcg";
  startTimeoutMs?: number;
}

/** States in which the domain's QEMU runs (it holds its disks). */
const ALIVE = new Set(["running", "paused", "idle", "in shutdown", "pmsuspended", "blocked"]);

/**
 * Failover and test VMs as libvirt domains built from the replicated spec (libvirtDomainXml.ts).
 * A failover VM is a persistent domain (production: operators see and manage it with virsh or
 * virt-manager; it outlives the site); a test VM is a transient one, destroyed when the test
 * stops, and by the next start of the site if the site died first. Each domain is started paused,
 * resumed, and counted running once `virsh domstate` says so.
 */
export class LibvirtLauncher implements VmLauncher {
  readonly kind = "libvirt" as const;
  readonly prefix: string;
  readonly virsh: Virsh;
  private kvm: boolean | undefined;

  constructor(private readonly opts: LibvirtLauncherOptions) {
    this.prefix = `qreplica-${opts.siteId}-`;
    this.virsh = new Virsh(opts.uri);
  }

  domainName(name: string): string {
    return `${this.prefix}${name}`;
  }

  async launch(req: LaunchRequest, logger: Logger): Promise<SiteVm> {
    const domain = this.domainName(req.name);
    const log = logger.child({ vm: req.name, domain });
    const spec = validateVmSpec(req.spec);
    for (const d of spec.disks) {
      const img = req.diskImages[d.diskId];
      if (img === undefined || !existsSync(img)) throw new VmLaunchError(req.name, `the image of disk ${d.diskId} (${img ?? "none given"}) does not exist`);
    }
    if (await this.exists(domain)) {
      if (!(await this.ours(domain))) throw new VmLaunchError(req.name, `libvirt already has a domain ${domain} that this site did not launch; rename or undefine it`);
      if (ALIVE.has(await this.state(domain))) throw new VmLaunchError(req.name, `its domain ${domain} runs already; stop it first (virsh -c ${this.opts.uri} destroy ${domain})`);
      await this.remove(domain);
    }
    mkdirSync(req.runDir, { recursive: true, mode: 0o700 });
    const serialLogPath = join(resolve(req.runDir), `${req.name}.serial.log`);
    rmSync(serialLogPath, { force: true });
    const domainType = await this.domainType(log);
    const xmlPath = join(resolve(req.runDir), `${req.name}.domain.xml`);
    const xml = domainXml({
      domain,
      spec,
      diskImages: req.diskImages,
      serialLogPath,
      network: req.network,
      domainType,
      owner: { siteDir: this.opts.siteDir, lifetime: req.lifetime },
      runAs: runAs(),
    });
    writeFileSync(xmlPath, xml, { mode: 0o600 });
    const startedAt = new Date();
    const timeoutMs = this.opts.startTimeoutMs ?? 30_000;
    try {
      if (req.lifetime === "outlives-site") {
        await this.virsh.run(["define", xmlPath]);
        await this.virsh.run(["start", domain, "--paused"]);
      } else {
        await this.virsh.run(["create", xmlPath, "--paused"]);
      }
      await this.virsh.run(["resume", domain]);
      const deadline = Date.now() + timeoutMs;
      for (let st = await this.state(domain); st !== "running"; st = await this.state(domain)) {
        if (Date.now() > deadline) throw new Error(`domain ${domain} is still '${st}' ${timeoutMs} ms after resume`);
        await sleep(20);
      }
    } catch (err) {
      await this.remove(domain).catch(() => undefined);
      throw new VmLaunchError(req.name, `libvirt (${this.opts.uri}) could not run domain ${domain} from ${xmlPath}: ${(err as Error).message}`, { cause: err });
    }
    const vm = new LibvirtSiteVm(this, req.name, domain, domainType === "kvm" ? "kvm" : "tcg", serialLogPath, qemuPidOf(domain), startedAt, new Date());
    log.info(
      { accel: vm.accel, pid: vm.pid, startMs: vm.runningAt.getTime() - startedAt.getTime(), persistent: req.lifetime === "outlives-site" },
      "VM running as a libvirt domain",
    );
    return vm;
  }

  async isRunning(ref: VmRef): Promise<boolean> {
    if (ref.launcher !== "libvirt" || !(await this.exists(ref.domain)) || !(await this.ours(ref.domain))) return false;
    return ALIVE.has(await this.state(ref.domain));
  }

  /**
   * As the qemu launcher ends a VM it adopted (SIGTERM: QEMU flushes and closes its images):
   * `destroy --graceful`, then a plain `destroy` if QEMU did not end, then the definition goes.
   */
  async stopRecorded(ref: VmRef, _graceMs: number): Promise<void> {
    if (ref.launcher !== "libvirt" || !(await this.exists(ref.domain)) || !(await this.ours(ref.domain))) return;
    if (ALIVE.has(await this.state(ref.domain))) await this.virsh.run(["destroy", ref.domain, "--graceful"]).catch(() => undefined);
    await this.remove(ref.domain);
  }

  async removeLeftover(_dir: string, name: string): Promise<void> {
    const domain = this.domainName(name);
    if ((await this.exists(domain)) && (await this.ours(domain))) await this.remove(domain);
  }

  async removeTestLeftovers(): Promise<string[]> {
    const removed: string[] = [];
    for (const domain of await this.domains()) {
      if (!domain.startsWith(this.prefix)) continue;
      const owner = launchOwnerOf(await this.virsh.run(["dumpxml", domain]).catch(() => ""));
      if (owner?.siteDir !== this.opts.siteDir || owner.lifetime !== "dies-with-site") continue;
      await this.remove(domain);
      removed.push(domain);
    }
    return removed;
  }

  /** ACPI shutdown, a hard stop (`destroy`) after `graceMs`, then the definition goes. */
  async stopDomain(domain: string, graceMs: number): Promise<void> {
    if (ALIVE.has(await this.state(domain))) {
      await this.virsh.run(["shutdown", domain]).catch(() => undefined);
      const deadline = Date.now() + graceMs;
      while (Date.now() < deadline && ALIVE.has(await this.state(domain))) await sleep(100);
    }
    await this.remove(domain);
  }

  /** `destroy` if it runs, `undefine` if it is persistent; a domain already gone is fine. */
  private async remove(domain: string): Promise<void> {
    if (ALIVE.has(await this.state(domain))) await this.virsh.run(["destroy", domain]);
    // A transient domain is gone once destroyed; a persistent one is still listed.
    if (await this.exists(domain)) await this.virsh.run(["undefine", domain]);
  }

  private async domainType(logger: Logger): Promise<"kvm" | "qemu"> {
    if (this.opts.accel !== "auto") return this.opts.accel === "kvm" ? "kvm" : "qemu";
    if (this.kvm === undefined) {
      const offered = await this.virsh.run(["domcapabilities", "--virttype", "kvm", "--arch", "x86_64"]).then(
        () => true,
        () => false,
      );
      // QEMU runs as the site's uid:gid (static label): libvirt gives it no supplementary groups,
      // so a /dev/kvm of group kvm is not QEMU's even when the site's user is in that group.
      const local = !/^[a-z+]+:\/\/[^/]/.test(this.opts.uri);
      this.kvm = offered && (!local || kvmOpenableBy(runAs()));
      if (offered && !this.kvm)
        logger.warn(
          { uri: this.opts.uri, ...runAs() },
          "libvirt offers KVM but /dev/kvm is not open to the site's uid:gid, which QEMU runs as: TCG; give the site's user a primary group with /dev/kvm access, or set accel kvm",
        );
    }
    return this.kvm ? "kvm" : "qemu";
  }

  private async domains(): Promise<string[]> {
    return (await this.virsh.run(["list", "--all", "--name"]))
      .split("\n")
      .map((l) => l.trim())
      .filter(Boolean);
  }

  private async exists(domain: string): Promise<boolean> {
    return (await this.domains()).includes(domain);
  }

  private async ours(domain: string): Promise<boolean> {
    const xml = await this.virsh.run(["dumpxml", domain]).catch(() => "");
    return launchOwnerOf(xml)?.siteDir === this.opts.siteDir;
  }

  /** libvirt's state name, or "" when there is no such domain. */
  async state(domain: string): Promise<string> {
    return (await this.virsh.run(["domstate", domain]).catch(() => "")).trim();
  }
}

class LibvirtSiteVm implements SiteVm {
  readonly launcher = "libvirt" as const;
  readonly ref: VmRef;
  private stopping: Promise<void> | undefined;

  constructor(
    private readonly launcher_: LibvirtLauncher,
    readonly name: string,
    readonly domain: string,
    readonly accel: "kvm" | "tcg",
    readonly serialLogPath: string,
    readonly pid: number,
    readonly startedAt: Date,
    readonly runningAt: Date,
  ) {
    this.ref = { launcher: "libvirt", uri: launcher_.virsh.uri, domain };
  }

  stop(opts: { timeoutMs?: number } = {}): Promise<void> {
    this.stopping ??= this.launcher_.stopDomain(this.domain, opts.timeoutMs ?? 30_000);
    return this.stopping;
  }

  releaseMonitor(): Promise<string> {
    return Promise.reject(
      new VmLaunchError(this.name, `it runs as libvirt domain ${this.domain}, whose monitor libvirt owns; reverse replication from a libvirt-launched VM is not supported yet`),
    );
  }
}

/** QEMU runs as the site's own user and group. */
function runAs(): { uid: number; gid: number } {
  return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 };
}

/** Whether /dev/kvm opens read-write for this uid:gid alone (no supplementary groups). */
function kvmOpenableBy(id: { uid: number; gid: number }): boolean {
  try {
    const st = statSync("/dev/kvm");
    const rw = (shift: number) => ((st.mode >> shift) & 0o6) === 0o6;
    return id.uid === 0 || (st.uid === id.uid && rw(6)) || (st.gid === id.gid && rw(3)) || rw(0);
  } catch {
    return false;
  }
}

/** QEMU's pid from the local system driver's state dir; 0 when not readable (a remote or session libvirt). */
function qemuPidOf(domain: string): number {
  try {
    const pid = Number(readFileSync(`/run/libvirt/qemu/${domain}.pid`, "utf8").trim());
    return Number.isInteger(pid) && pid > 1 ? pid : 0;
  } catch {
    return 0;
  }
}
