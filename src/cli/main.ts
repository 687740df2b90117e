import { Command } from "commander";
import { EXIT } from "./exitCodes.js";
import { registerAuthorize } from "./commands/authorize.js";
import { registerExtend } from "./commands/extend.js";
import { validateIdArguments } from "./idArguments.js";
import { registerFailover, registerReverse } from "./commands/failover.js";
import { registerGroups } from "./commands/groups.js";
import { registerLedger } from "./commands/ledger.js";
import { registerPki } from "./commands/pki.js";
import { registerPolicy } from "./commands/policy.js";
import { registerReplication } from "./commands/replication.js";
import { registerInitialReplication } from "./commands/initialReplication.js";
import { registerRunbook } from "./commands/runbook.js";
import { registerSite } from "./commands/site.js";
import { registerStatus } from "./commands/status.js";
import { registerWait } from "./commands/wait.js";
import { registerVerify } from "./commands/verify.js";
import { registerMonitoring } from "./commands/monitoring.js";
import { packageVersion } from "../common/version.js";

// Keys, ledgers, replica images and everything else qreplica creates are for this user alone,
// whatever the shell's umask (022 would make them world-readable); QEMU children inherit it.
process.umask(0o077);

const program = new Command()
  .name("qreplica")
  .description("Replication and disaster recovery for QEMU/KVM virtual machines")
  .version(packageVersion())
  // Root options only before a command: `policy show NAME --version N` is the command's, not the program's version.
  .enablePositionalOptions()
  // A usage mistake (unknown option, missing argument) is invalid input, not a failure.
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : EXIT.invalid));
validateIdArguments(program);
registerPki(program);
registerSite(program);
registerAuthorize(program);
registerStatus(program);
registerWait(program);
registerMonitoring(program);
registerLedger(program);
registerFailover(program);
registerVerify(program);
registerReverse(program);
registerGroups(program);
registerExtend(program);
registerReplication(program);
registerInitialReplication(program);
registerRunbook(program);
registerPolicy(program);
await program.parseAsync();
