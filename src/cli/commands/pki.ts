import type { Command } from "commander";
import { createCa, issueCertificate } from "../../transport/index.js";
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
    .description("issue a certificate for a site or agent identity, signed by the CA")
    .requiredOption("--ca-dir <dir>", "the CA's directory")
    .requiredOption("--name <name>", "identity (certificate CN): the site id or the agent's name")
    .requiredOption("--out-dir <dir>", "where to write NAME.key and NAME.crt")
    .option("--san <names...>", "extra DNS names or IPs", [])
    .option("--json", "JSON output", false)
    .action(async (o: { caDir: string; name: string; outDir: string; san: string[]; json: boolean }) => {
      try {
        const files = await issueCertificate({ caDir: o.caDir, name: o.name, dir: o.outDir, sans: ["localhost", "127.0.0.1", ...o.san] });
        emit(o.json, files, () => `issued '${o.name}': ${files.certFile}`);
      } catch (err) {
        fail(err, o.json);
      }
    });
}
