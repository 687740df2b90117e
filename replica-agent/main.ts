/**
 * qreplica-agent --config FILE: protects the VMs listed in its config, replicating each to its
 * replica site. Runs until SIGTERM/SIGINT (open cycles aborted, their changes kept) or until every VM's
 * replication has ended by itself; SIGHUP rereads the config (daemon/agentVms.ts).
 */
import { Command } from "commander";
import { existsSync } from "node:fs";
import { tightenTree } from "../src/common/dataAtRest.js";
import { createLogger } from "../src/common/logger.js";
import { errorMessage } from "../src/common/errors.js";
import { loadSiteCredentials, RevocationList } from "../src/transport/index.js";
import { AgentConfigError, loadAgentConfig } from "./daemon/agentConfig.js";
import { CycleScheduler } from "./daemon/cycleScheduler.js";
import { AgentVms } from "./daemon/agentVms.js";
import { enableAgentMetrics } from "./daemon/agentMetrics.js";
import { startMetricsServer } from "../src/common/metricsServer.js";
import { packageVersion } from "../src/common/version.js";

// State files, sockets and scratch images are this user's alone, whatever the umask; QEMU
// processes the agent starts inherit it.
process.umask(0o077);

const opts = new Command()
  .name("qreplica-agent")
  .description("capture agent: replicates the VMs of this host to their replica sites")
  .version(packageVersion())
  .requiredOption("--config <file>", "agent config (YAML or JSON)")
  .parse()
  .opts<{ config: string }>();

const logger = createLogger("qreplica-agent");
try {
  const config = loadAgentConfig(opts.config);
  const tls = loadSiteCredentials(config.tls, { logger });
  // Read again whenever it changes (a restart applies a new path): a revoked site is refused at the next dial.
  if (config.tls.crlFile) tls.revocations = await RevocationList.open(config.tls.crlFile, config.tls.caFile, { logger: logger.child({ part: "revocation" }) });
  // A state directory an older version made may still be readable by others: tighten it.
  const tightened = existsSync(config.stateDir) ? tightenTree(config.stateDir) : 0;
  if (tightened > 0) logger.warn({ stateDir: config.stateDir, entries: tightened }, "took group/other permissions off state files an older version left readable");
  if (config.metricsListen) await startMetricsServer(config.metricsListen, await enableAgentMetrics(), logger);
  // One scheduler for every VM of this host: cycles spread over their interval, a bounded number at once.
  const scheduler = new CycleScheduler(config.maxCyclesInFlight);
  const vms = new AgentVms(config, tls, scheduler, logger);
  const stop = () => {
    logger.info("stopping: open cycles are aborted, their changes kept for the next run");
    vms.stop();
    // A session blocked on an unreachable site must not keep the process alive forever.
    setTimeout(() => process.exit(0), 10_000).unref();
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
  // SIGHUP (systemctl reload): reread the config and apply it; a config that does not load is refused.
  process.on("SIGHUP", () => {
    logger.info({ config: opts.config }, "SIGHUP: reloading the config");
    void vms.reload(opts.config);
  });
  vms.start();
  logger.info({ vms: config.vms.map((v) => v.id), maxCyclesInFlight: config.maxCyclesInFlight }, "agent started");
  await vms.done;
  process.exit(vms.failures > 0 ? 1 : 0);
} catch (err) {
  logger.error({ err }, "agent failed");
  console.error(`qreplica-agent: ${errorMessage(err)}`);
  // 2, as the CLI's "invalid input": a config that does not load will not load on a restart either.
  process.exit(err instanceof AgentConfigError ? 2 : 1);
}
