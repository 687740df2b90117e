import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../common/logger.js";
import { ControlServiceService } from "../gen/qreplica/v1/control.js";
import { ReplicationServiceService, type ReplicationServiceServer } from "../gen/qreplica/v1/replication.js";
import { getSqliteEventStore } from "../ledger/index.js";
import { ReplicaStorage, SiteStorageDaemon } from "../storage/index.js";
import { grpcServerOptions, loadSiteCredentials, serverCredentials, widenServerFlowControl } from "../transport/index.js";
import { controlService } from "./controlPlane/controlService.js";
import { ReplicateSession } from "./dataPlane/replicateSession.js";
import { Relationships } from "./relationships.js";
import { FailoverService } from "./failover/failoverService.js";
import { SiteContext } from "./siteContext.js";
import { importLegacyAuthorizations, SiteAuthorizations } from "./authorizations.js";
import { addressFile, loadSiteConfig, runDir } from "./siteConfig.js";

function readPreviousAddress(dir: string): string | undefined {
  try {
    const text = readFileSync(addressFile(dir), "utf8").trim();
    return /:\d+$/.test(text) ? text : undefined;
  } catch {
    return undefined;
  }
}

/** How long a stop lets open calls finish before it closes them. */
const SHUTDOWN_GRACE_MS = 2_000;

export interface RunningSite {
  siteId: string;
  /** host:port actually bound (the configured port may be 0). */
  address: string;
  context: SiteContext;
  stop(): Promise<void>;
}

/**
 * `qreplica site serve`: the ledger, the storage daemon, and the gRPC data and control planes
 * over mutual TLS. Recovers from an earlier crash before accepting anything.
 */
export async function startSite(dir: string, logger: Logger): Promise<RunningSite> {
  const config = loadSiteConfig(dir);
  const creds = loadSiteCredentials({ caFile: config.caFile, certFile: config.certFile, keyFile: config.keyFile }, { logger });
  const log = logger.child({ site: config.siteId });
  const store = getSqliteEventStore({ path: config.ledgerPath });
  // Before anything starts, so a refused wildcard leaves nothing running.
  await importLegacyAuthorizations(dir, new SiteAuthorizations(store), config.siteId, log).catch(async (err: unknown) => {
    await store.close();
    throw err;
  });
  const daemon = await SiteStorageDaemon.start(runDir(dir), log);
  const storage = new ReplicaStorage(config.storageRoot, daemon, log);
  const relationships = new Relationships(store, storage, { siteId: config.siteId, defaultMaxPoints: config.defaultMaxPoints }, log);
  const vmIds = await relationships.recover();
  const failovers = new FailoverService(store, runDir(dir), config.accel, log);
  await failovers.recover(vmIds);
  const context = new SiteContext(config.siteId, dir, store, storage, relationships, failovers, log);

  const server = new grpc.Server(grpcServerOptions);
  const replicationServer: ReplicationServiceServer = {
    replicate: (call) => {
      void new ReplicateSession(context, call).run();
    },
  };
  server.addService(ReplicationServiceService, replicationServer);
  server.addService(ControlServiceService, controlService(context));
  const bind = (listen: string) =>
    new Promise<number>((resolve, reject) => server.bindAsync(listen, serverCredentials(creds), (err, p) => (err ? reject(err) : resolve(p))));
  // With port 0 the first start picks a port; later starts keep it, so agents find the site again.
  const previous = config.listen.endsWith(":0") ? readPreviousAddress(dir) : undefined;
  const port = previous ? await bind(previous).catch(() => bind(config.listen)) : await bind(config.listen);
  widenServerFlowControl(server);
  const host = config.listen.slice(0, config.listen.lastIndexOf(":"));
  const address = `${host}:${port}`;
  mkdirSync(runDir(dir), { recursive: true });
  writeFileSync(addressFile(dir), address + "\n");
  log.info({ address }, "site serving");

  return {
    siteId: config.siteId,
    address,
    context,
    async stop() {
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
      await failovers.stopAllTests();
      await context.serializer.idle();
      await daemon.stop();
      await store.close();
    },
  };
}
