import { liftDownstreamFailover } from "./extension/downstreamCancel.js";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../common/logger.js";
import { ControlServiceService } from "../gen/qreplica/v1/control.js";
import { ReplicationServiceService, type ReplicationServiceServer } from "../gen/qreplica/v1/replication.js";
import {
  LedgerReadModels,
  executeCommand,
  getSqliteEventStore,
  onRelationshipSnapshotIgnored,
  recordDownstreamFailover,
  type EventStore,
  type RelationshipState,
} from "../ledger/index.js";
import { describeLedger, openConfiguredLedger } from "../ledger/ledgerConfig.js";
import { ReplicaStorage, SiteStorageDaemon, StorageDaemonExitedError } from "../storage/index.js";
import { RenewingSiteCredentials, RevocationList, grpcServerOptions, loadSiteCredentials, widenServerFlowControl, type SiteCredentials } from "../transport/index.js";
import { tolerantDecoding } from "./tolerantDecoding.js";
import { controlService } from "./controlPlane/controlService.js";
import { policyService } from "./controlPlane/policyService.js";
import { PolicyServiceService } from "../gen/qreplica/v1/policy.js";
import { SitePolicies } from "./sitePolicies.js";
import { siteDefaultRetention, type RetentionSource } from "./retention.js";
import { liveSiteSettings, reloadSiteConfig, type SiteReload } from "./siteReload.js";
import { ResyncWindows } from "./resyncWindows.js";
import { ReplicateSession } from "./dataPlane/replicateSession.js";
import { Relationships } from "./relationships/relationships.js";
import { FailoverService } from "./failover/failoverService.js";
import { SiteLaunchers } from "./launcher/index.js";
import { SiteContext } from "./siteContext.js";
import { Extensions } from "./extension/extensions.js";
import { ExtensionLedger } from "./extension/extensionLedger.js";
import { importLegacyAuthorizations, SiteAuthorizations } from "./authorizations.js";
import { addressFile, hostPort, isWildcardHost, listenHost, loadSiteConfig, runDir, type SiteConfig } from "./siteConfig.js";
import { tightenTree } from "../common/dataAtRest.js";
import { lockSiteDirectory, type SiteLock } from "./siteLock.js";
import { HealthMonitor } from "./health/monitor.js";
import { SiteMetrics } from "./health/siteMetrics.js";
import { MonitoringServiceService } from "../gen/qreplica/v1/monitoring.js";
import { monitoringService } from "./controlPlane/monitoringService.js";
import { startMetricsServer, type MetricsServer } from "../common/metricsServer.js";
import { DrillService } from "./drills/drillService.js";
import { DrillScheduler } from "./drills/drillScheduler.js";

/** The port of the address an earlier start wrote, so a `:0` site keeps its port across restarts. */
function readPreviousPort(dir: string): number | undefined {
  try {
    const m = /:(\d+)$/.exec(readFileSync(addressFile(dir), "utf8").trim());
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** How long a stop lets open calls finish before it closes them. */
const SHUTDOWN_GRACE_MS = 2_000;

export interface RunningSite {
  siteId: string;
  /** host:port peers dial (never a wildcard; the configured port may be 0). */
  address: string;
  /** host:port of /metrics, when it is on. */
  metricsAddress: string | undefined;
  context: SiteContext;
  /** SIGHUP: site.json and the TLS files read again; what can change live does (siteReload.ts). */
  reload(): SiteReload;
  /**
   * Settles only if the site can no longer work and must be restarted (its storage daemon died);
   * the process running the site stops it and exits non-zero, so a service manager restarts it.
   */
  failed: Promise<StorageDaemonExitedError>;
  stop(): Promise<void>;
}

/**
 * The ledger and its -wal/-shm are the site's audit trail and name every image: 0600 whatever the
 * umask. SQLite gives -wal and -shm the mode of the database file, so creating that file 0600
 * before SQLite opens it is enough for a new ledger; an older ledger is tightened in place.
 */
async function openLedger(config: SiteConfig, log: Logger): Promise<EventStore> {
  if (config.ledger && config.ledger.kind !== "sqlite") {
    log.info({ ledger: describeLedger(config.ledger, config.ledgerPath), kind: config.ledger.kind }, "ledger in a shared store");
    return openConfiguredLedger(config.ledger, config.ledgerPath, { logger: log });
  }
  const path = config.ledgerPath;
  if (!existsSync(path)) closeSync(openSync(path, "a", 0o600));
  for (const p of [path, `${path}-wal`, `${path}-shm`]) if (existsSync(p)) chmodSync(p, 0o600);
  return getSqliteEventStore({ path });
}

/**
 * What peers dial. A wildcard listen address (0.0.0.0, ::) binds every interface but is no
 * address: the file would send agents and the CLI to 0.0.0.0. It gets the host the operator named
 * at `site init --san` instead, which is also on the certificate, else the loopback address.
 */
function dialableAddress(config: SiteConfig, port: number): string {
  const host = listenHost(config.listen);
  return hostPort(isWildcardHost(host) ? (config.advertiseHost ?? "127.0.0.1") : host, port);
}

/**
 * `qreplica site serve`: the ledger, the storage daemon, and the gRPC data and control planes
 * over mutual TLS. Takes the directory's lock before anything else, then recovers from an
 * earlier crash (and re-adopts the failover VMs and reverse agents it supervises) before
 * accepting anything.
 */
export async function startSite(dir: string, logger: Logger, options: { metricsListen?: string } = {}): Promise<RunningSite> {
  const loaded = loadSiteConfig(dir);
  const config = options.metricsListen ? { ...loaded, metricsListen: options.metricsListen } : loaded;
  const creds = loadSiteCredentials({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile }, { logger });
  const lock = lockSiteDirectory(dir, runDir(dir));
  // What a failed start has opened so far, undone newest first, the lock last.
  const cleanups: Array<() => Promise<void> | void> = [];
  try {
    const overrides = options.metricsListen ? { metricsListen: options.metricsListen } : {};
    return await serve(dir, config, creds, logger, lock, cleanups, overrides);
  } catch (err) {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
    lock.release();
    throw err;
  }
}

async function serve(
  dir: string,
  config: SiteConfig,
  creds: SiteCredentials,
  logger: Logger,
  lock: SiteLock,
  cleanups: Array<() => Promise<void> | void>,
  overrides: Partial<SiteConfig>,
): Promise<RunningSite> {
  const log = logger.child({ site: config.siteId });
  // Shared by reference with the parts that read them, so a reload changes them in place.
  const live = liveSiteSettings(config);
  mkdirSync(config.storageRoot, { recursive: true, mode: 0o700 });
  const tightened = [dir, config.storageRoot].reduce((n, root) => n + tightenTree(root), 0);
  if (tightened > 0) log.warn({ entries: tightened }, "took group/other permissions off files an older version left readable (images, ledger, keys)");
  const store = await openLedger(config, log);
  cleanups.push(() => store.close());
  // Before anything starts, so a refused wildcard leaves nothing running.
  await importLegacyAuthorizations(dir, new SiteAuthorizations(store), config.siteId, log);
  const daemon = await SiteStorageDaemon.start(runDir(dir), log);
  cleanups.push(() => daemon.stop());
  let stopping = false;
  const daemonPid = daemon.proc.pid;
  const failed = new Promise<StorageDaemonExitedError>((resolveFailed) => {
    void daemon.proc.exited.then((exit) => {
      if (!stopping) resolveFailed(new StorageDaemonExitedError(daemonPid, exit, dir));
    });
  });
  const storage = new ReplicaStorage(config.storageRoot, daemon, log);
  const unwatch = onRelationshipSnapshotIgnored((p) => log.warn({ vm: p.vmId, reason: p.reason }, "relationship snapshot ignored: folding the events instead"));
  cleanups.push(unwatch);
  // Snapshot + the events after it: a restart does not fold years of events again.
  const readModels = await LedgerReadModels.open(store, { logger: log });
  cleanups.push(() => readModels.close());
  const policies = await SitePolicies.open(store, live.site, log);
  // A VM bound to a policy keeps what its tiers promise; one on the built-in default, the site's
  // defaultRetention (or its point count).
  const siteDefault = siteDefaultRetention(live.site);
  const retentionFor: RetentionSource = (vmId, state) => (policies.effectivePolicyVersion(vmId).version > 0 ? policies.effectivePolicy(vmId).retention : siteDefault(vmId, state));
  // Set just below (it needs the context); retention asks it only once cycles arrive.
  let extensions: Extensions | undefined;
  const alsoHeld = (vmId: string, state: RelationshipState) => extensions?.heldPoints(vmId, state) ?? new Set<string>();
  const relationships = new Relationships(store, storage, live.site, log, { retentionFor, alsoHeld });
  const vmIds = await relationships.recover(readModels.vmIds());
  const launchers = new SiteLaunchers({
    launcher: config.launcher,
    ...(config.libvirtUri !== undefined ? { libvirtUri: config.libvirtUri } : {}),
    accel: config.accel,
    siteId: config.siteId,
    siteDir: dir,
  });
  const failovers = new FailoverService(store, runDir(dir), launchers, log);
  cleanups.push(() => failovers.detach());
  await failovers.recover(vmIds);
  const context = new SiteContext(config.siteId, dir, store, storage, relationships, failovers, log, readModels, policies);
  extensions = new Extensions(
    {
      siteId: config.siteId,
      loadRelationship: (vmId) => relationships.load(vmId),
      storage,
      serialized: (vmId, fn) => context.serializer.run(vmId, fn),
      afterRead: (vmId) => context.afterCommit(vmId),
      stopPrimary: (vmId, seconds) => {
        const session = context.sessionFor(vmId);
        if (!session) return Promise.reject(new Error(`the primary's agent for VM ${vmId} is not connected to site ${config.siteId}`));
        return session.requestPlannedFailover(seconds, 5 * 60_000);
      },
      recordDownstreamFailover: (vmId, input) =>
        context.serializer.run(vmId, () =>
          executeCommand(store, vmId, (s) => recordDownstreamFailover(s, input), { metadata: { actor: input.requestedBy || input.targetSiteId } }),
        ),
      downstreamFailoverCancelled: (vmId, told) => liftDownstreamFailover(context, vmId, { ...told, toldBy: "target" }),
      tls: creds,
      logger: log.child({ part: "extension" }),
    },
    new ExtensionLedger(store),
    { failovers, tlsFiles: { caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile } },
  );
  context.extensions = extensions;
  await extensions.start();
  const startedExtensions = extensions;
  cleanups.push(() => startedExtensions.close());
  if (config.crlFile) {
    const revocations = await RevocationList.open(config.crlFile, config.caFile, { logger: log.child({ part: "revocation" }) });
    context.revocations = revocations;
    revocations.onReload(() => {
      const cut = context.cutRevokedSessions();
      if (cut.length) log.warn({ vms: cut }, "revoked primaries' open streams cut");
    });
    cleanups.push(() => revocations.close());
  }
  const metrics = new SiteMetrics();
  const health = new HealthMonitor(store, context.activity, (vmId) => context.sessionFor(vmId) !== undefined, live.health, log.child({ part: "health" }), metrics);
  context.health = health;
  health.policyOf = (vmId) => policies.healthThresholds(vmId);
  const siteCertificate = (c: SiteCredentials) => ({ which: "site" as const, commonName: c.identity.commonName, notAfter: c.identity.notAfter.getTime(), file: config.certFile });
  health.siteCertificate = siteCertificate(creds);
  // A certificate renewed at the same paths is served to new connections within CERTIFICATE_REFRESH_MS.
  const tls = new RenewingSiteCredentials({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile }, creds, {
    logger: log.child({ part: "tls" }),
    onRenewed: (c) => (health.siteCertificate = siteCertificate(c)),
  });
  cleanups.push(() => tls.close());
  const credentials = tls.serverCredentials();
  await health.start();
  cleanups.push(() => health.stop());
  let metricsServer: MetricsServer | undefined;
  if (config.metricsListen) {
    metricsServer = await startMetricsServer(config.metricsListen, metrics.registry, log);
    cleanups.push(() => metricsServer?.close());
  }
  const resyncWindows = new ResyncWindows(context).start(() => context.connectedVmIds());
  cleanups.push(() => resyncWindows.stop());
  const drills = new DrillService({
    store,
    failovers,
    verificationOf: (vmId) => ({ policyName: policies.effectivePolicyVersion(vmId).name, verification: policies.effectivePolicy(vmId).verification }),
    serialize: (vmId, fn) => context.serializer.run(vmId, fn),
    logger: log.child({ part: "drills" }),
  });
  context.drills = drills;
  const drillScheduler = new DrillScheduler({
    drills,
    statuses: async () => {
      await readModels.refresh();
      const now = new Date();
      return readModels.vmIds().flatMap((vmId) => readModels.statusOf(vmId, now) ?? []);
    },
    verificationOf: (vmId) => policies.effectivePolicy(vmId).verification,
    logger: log.child({ part: "drills" }),
  }).start();
  cleanups.push(async () => {
    await drillScheduler.stop();
    await drills.stop();
  });

  const server = new grpc.Server(grpcServerOptions);
  const replicationServer: ReplicationServiceServer = {
    replicate: (call) => {
      void new ReplicateSession(context, call).run();
    },
  };
  server.addService(tolerantDecoding(ReplicationServiceService), replicationServer);
  server.addService(tolerantDecoding(ControlServiceService), controlService(context));
  server.addService(tolerantDecoding(PolicyServiceService), policyService(context));
  server.addService(tolerantDecoding(MonitoringServiceService), monitoringService(context));
  const bind = (listen: string) => new Promise<number>((resolve, reject) => server.bindAsync(listen, credentials, (err, p) => (err ? reject(err) : resolve(p))));
  cleanups.push(() => server.forceShutdown());
  // With port 0 the first start picks a port; later starts keep it, so agents find the site again.
  const previous = config.listen.endsWith(":0") ? readPreviousPort(dir) : undefined;
  const listenOn = (port: number) => hostPort(listenHost(config.listen) || "0.0.0.0", port);
  const port = previous ? await bind(listenOn(previous)).catch(() => bind(config.listen)) : await bind(config.listen);
  widenServerFlowControl(server, {
    onWindowGrown: (streamWindow, peer) => log.debug({ peer, streamWindowBytes: streamWindow }, "HTTP/2 receive window grown (long fat pipe)"),
  });
  const address = dialableAddress(config, port);
  writeFileSync(addressFile(dir), address + "\n", { mode: 0o600 });
  log.info({ address, listen: config.listen }, "site serving");

  return {
    siteId: config.siteId,
    address,
    metricsAddress: metricsServer?.address,
    context,
    reload: () => {
      // SIGHUP reads renewed TLS files at once rather than at the next refresh.
      tls.check();
      return reloadSiteConfig(dir, { config, creds: tls.credentials }, live, log, overrides);
    },
    failed,
    async stop() {
      stopping = true;
      // At once, beside the agents' grace: a drill's VM and checks have nothing to finish.
      const drillsStopped = drillScheduler.stop().then(() => drills.stop());
      // Agents keep their Replicate streams open for good: waiting for them to end would make a
      // stop hang until the service manager kills the site. In-flight cycles that are cut are
      // never committed (a point needs CycleEnd, flush and fsync) and the agent retries them.
      let graceTimer: NodeJS.Timeout | undefined;
      await Promise.race([
        new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
        new Promise<void>((resolve) => (graceTimer = setTimeout(resolve, SHUTDOWN_GRACE_MS))),
      ]);
      clearTimeout(graceTimer);
      server.forceShutdown();
      resyncWindows.stop();
      // Cancelled drills record their results (while their tests hold the points) before the test VMs are stopped.
      await drillsStopped;
      await health.stop();
      await metricsServer?.close();
      await failovers.stopAllTests();
      failovers.detach();
      await extensions?.close();
      context.stopRetention();
      await context.serializer.idle();
      // The newest points' chunk hash indexes are written after their commits: let them land.
      await storage.indexes.settled();
      // Refusals counted in an open window are recorded before the ledger closes.
      await context.refusals.flush();
      await daemon.stop();
      await readModels.close();
      context.revocations?.close();
      tls.close();
      unwatch();
      await store.close();
      // Last: until here a second site on this directory would have fought this one.
      lock.release();
    },
  };
}
