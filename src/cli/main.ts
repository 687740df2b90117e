import { Command } from "commander";
import { registerAuthorize } from "./commands/authorize.js";
import { registerFailover, registerReverse } from "./commands/failover.js";
import { registerLedger } from "./commands/ledger.js";
import { registerPki } from "./commands/pki.js";
import { registerReplication } from "./commands/replication.js";
import { registerRunbook } from "./commands/runbook.js";
import { registerSite } from "./commands/site.js";
import { registerStatus } from "./commands/status.js";

const program = new Command()
  .name("qreplica")
  .description("Replication and disaster recovery for QEMU/KVM virtual machines")
  .version("0.1.0");
registerPki(program);
registerSite(program);
registerAuthorize(program);
registerStatus(program);
registerLedger(program);
registerFailover(program);
registerReverse(program);
registerReplication(program);
registerRunbook(program);
await program.parseAsync();
