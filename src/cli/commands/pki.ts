import type { Command } from "commander";
import { createCa, isRole, issueCertificate, ROLES, type Role } from "../../transport/index.js";
import { InvalidCliArgumentError } from "../exitCodes.js";
import { emit, fail } from "../output.js";

export function registerPki(program: Command): void {
  const pki = program.command("pki").description("make a CA and issue site certificates, so sites trust each other");
  pki
    .command("create-ca")
    .description("create a certificate authority (ca.key, ca.crt) in DIR")
    .requiredOption("--dir <dir>", "directory for the CA")
    .option("--name <name>", "CA name", "qreplica CA")
    .option("--json", "JSON output", false)
    .action(async (o: { dir: string; name: string; json: boolean }) => {
      try {
        const files = await createCa({ dir: o.dir, name: o.name });
        emit(o.json, files, () => `created CA '${o.name}': ${files.certFile}\nkeep ${files.keyFile} private; give ${files.certFile} to every site`);
      } catch (err) {
        fail(err, o.json);
      }
    });
  pki
    .command("issue")
    .description("issue a certificate for an agent, a site or a person, signed by the CA, with the role it holds on control planes")
    .requiredOption("--ca-dir <dir>", "the CA's directory")
    .requiredOption("--name <name>", "identity (certificate CN): the site id, the agent's name, or a person's name")
    .requiredOption("--out-dir <dir>", "where to write NAME.key and NAME.crt")
    .option("--san <names...>", "extra DNS names or IPs", [])
    .option(
      "--role <role>",
      "what the identity may do on a site's control plane: agent (replicate only, no control calls), viewer (read status, points, events), " +
        "operator (viewer + failover, test failover, complete, cancel, reverse, pause, resume, resync, runbooks), admin (operator + authorization entries). " +
        "Defaults to agent, the least privilege",
      "agent",
    )
    .option("--json", "JSON output", false)
    .action(async (o: { caDir: string; name: string; outDir: string; san: string[]; role: string; json: boolean }) => {
      try {
        if (!isRole(o.role)) throw new InvalidCliArgumentError(`--role ${o.role}: expected one of ${ROLES.join(", ")}`);
        const role: Role = o.role;
        const files = await issueCertificate({ caDir: o.caDir, name: o.name, dir: o.outDir, sans: ["localhost", "127.0.0.1", ...o.san], role });
        emit(o.json, { ...files, role }, () => `issued '${o.name}' with role ${role}: ${files.certFile}`);
      } catch (err) {
        fail(err, o.json);
      }
    });
}
