import type { Command } from "commander";
import { createCa, createCertificateRequest, generateCrl, isRole, issueCertificate, revokeCertificate, ROLES, signCertificateRequest, type Role } from "../../transport/index.js";
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
    .option("--days <n>", "how long the certificate is valid", "825")
    .option("--json", "JSON output", false)
    .action(async (o: { caDir: string; name: string; outDir: string; san: string[]; role: string; days: string; json: boolean }) => {
      try {
        const role = roleOption(o.role);
        const days = daysOption(o.days);
        const files = await issueCertificate({ caDir: o.caDir, name: o.name, dir: o.outDir, sans: ["localhost", "127.0.0.1", ...o.san], role, days });
        emit(o.json, { ...files, role }, () => `issued '${o.name}' with role ${role}: ${files.certFile}`);
      } catch (err) {
        fail(err, o.json);
      }
    });
  registerTwoStepIssuance(pki);
  registerRevocation(pki);
}

const ROLE_HELP = "the role bound into the certificate: agent (replicate only), viewer, operator or admin; defaults to agent, the least privilege";

function roleOption(value: string): Role {
  if (!isRole(value)) throw new InvalidCliArgumentError(`--role ${value}: expected one of ${ROLES.join(", ")}`);
  return value;
}

function daysOption(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1 || n > 36500) throw new InvalidCliArgumentError(`--days ${value}: expected a whole number of days from 1 to 36500`);
  return n;
}

/** request on the site/agent host, sign on the CA host: the CA key stays where it is, the host's key stays on the host. */
function registerTwoStepIssuance(pki: Command): void {
  pki
    .command("request")
    .description("on a site or agent host: make a private key (0600, it never leaves this host) and a certificate signing request to take to the CA host")
    .requiredOption("--name <name>", "identity (certificate CN): the site id or the agent's name")
    .requiredOption("--out <dir>", "where to write NAME.key and NAME.csr")
    .option("--san <names...>", "extra DNS names or IPs peers dial (localhost and 127.0.0.1 are always added)", [])
    .option("--overwrite", "replace an existing NAME.key (renewal with a new key)", false)
    .option("--json", "JSON output", false)
    .action(async (o: { name: string; out: string; san: string[]; overwrite: boolean; json: boolean }) => {
      try {
        const files = await createCertificateRequest({ name: o.name, dir: o.out, sans: ["localhost", "127.0.0.1", ...o.san], overwrite: o.overwrite });
        emit(
          o.json,
          { name: o.name, ...files },
          () => `made ${files.keyFile} (keep it here) and ${files.csrFile}: sign it on the CA host with 'qreplica pki sign --csr ${files.csrFile}'`,
        );
      } catch (err) {
        fail(err, o.json);
      }
    });
  pki
    .command("sign")
    .description("on the CA host: sign a certificate signing request made by 'qreplica pki request', binding the role you choose")
    .requiredOption("--ca-dir <dir>", "the CA's directory")
    .requiredOption("--csr <file>", "the request (NAME.csr)")
    .requiredOption("--out <file>", "where to write the certificate (NAME.crt)")
    .option("--role <role>", ROLE_HELP, "agent")
    .option("--days <n>", "how long the certificate is valid", "825")
    .option("--san <names...>", "DNS names or IPs to add to those the request asks for", [])
    .option("--overwrite", "replace an existing certificate file", false)
    .option("--json", "JSON output", false)
    .action(async (o: { caDir: string; csr: string; out: string; role: string; days: string; san: string[]; overwrite: boolean; json: boolean }) => {
      try {
        const r = await signCertificateRequest({
          caDir: o.caDir,
          csrFile: o.csr,
          out: o.out,
          role: roleOption(o.role),
          days: daysOption(o.days),
          extraSans: o.san,
          overwrite: o.overwrite,
        });
        emit(o.json, { ...r, notAfter: r.notAfter.toISOString() }, () => `signed '${r.name}' with role ${r.role} until ${r.notAfter.toISOString()}: ${r.certFile}`);
      } catch (err) {
        fail(err, o.json);
      }
    });
}

function registerRevocation(pki: Command): void {
  pki
    .command("revoke")
    .description("on the CA host: revoke a certificate and write the CA's revocation list (crl.pem); copy it to every site's crlFile")
    .requiredOption("--ca-dir <dir>", "the CA's directory")
    .option("--cert <file>", "the certificate to revoke")
    .option("--serial <hex>", "or its serial number (hex), when the file is gone")
    .option("--reason <reason>", "keyCompromise, superseded, cessationOfOperation or unspecified", "unspecified")
    .option("--days <n>", "how long the list is valid (write a new one with 'pki crl' before then)", "30")
    .option("--json", "JSON output", false)
    .action(async (o: { caDir: string; cert?: string; serial?: string; reason: string; days: string; json: boolean }) => {
      try {
        if ((o.cert === undefined) === (o.serial === undefined)) throw new InvalidCliArgumentError("give exactly one of --cert FILE or --serial HEX");
        const reasons = ["keyCompromise", "superseded", "cessationOfOperation", "unspecified"] as const;
        const reason = reasons.find((r) => r === o.reason);
        if (!reason) throw new InvalidCliArgumentError(`--reason ${o.reason}: expected one of ${reasons.join(", ")}`);
        const r = await revokeCertificate({ caDir: o.caDir, ...(o.cert ? { certFile: o.cert } : { serial: o.serial! }), reason, days: daysOption(o.days) });
        emit(
          o.json,
          r,
          () => `${r.alreadyRevoked ? "already revoked" : "revoked"} serial ${r.serialNumber}; wrote ${r.crlFile} (${r.revoked.length} revoked): copy it to every site's crlFile`,
        );
      } catch (err) {
        fail(err, o.json);
      }
    });
  pki
    .command("crl")
    .description("on the CA host: write the CA's revocation list (crl.pem) again, e.g. before the current one's next update")
    .requiredOption("--ca-dir <dir>", "the CA's directory")
    .option("--days <n>", "how long the list is valid", "30")
    .option("--json", "JSON output", false)
    .action(async (o: { caDir: string; days: string; json: boolean }) => {
      try {
        const r = await generateCrl({ caDir: o.caDir, days: daysOption(o.days) });
        emit(o.json, { ...r, nextUpdate: r.nextUpdate.toISOString() }, () => `wrote ${r.crlFile} (${r.revoked.length} revoked, valid until ${r.nextUpdate.toISOString()})`);
      } catch (err) {
        fail(err, o.json);
      }
    });
}
