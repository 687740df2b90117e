import { existsSync, mkdirSync } from "node:fs";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { createLogger } from "../../common/logger.js";
import { adminCredentialFiles, isWildcardHost, listenHost, saveSiteConfig, siteFile } from "../../site/siteConfig.js";
import { startSite } from "../../site/siteServer.js";
import { DEFAULT_LIBVIRT_URI } from "../../site/launcher/index.js";
import { choiceOption, hostPortOption, intOption } from "../options.js";
import { emit, fail } from "../output.js";
import { InvalidCliArgumentError } from "../exitCodes.js";
import { makeSiteCertificates } from "./siteInitCertificates.js";

interface InitOptions {
  dir: string;
  name: string;
  caDir?: string;
  caCert?: string;
  listen: string;
  san: string[];
  maxPoints: number;
  accel: "auto" | "kvm" | "tcg";
  launcher: "qemu" | "libvirt";
  libvirtUri?: string;
  json: boolean;
}

export function registerSite(program: Command): void {
  const site = program.command("site").description("set up and run a site (replica server)");
  site
    .command("init")
    .description("create a site directory: config, ledger location, storage root, and the site's certificate from the CA")
    .requiredOption("--dir <dir>", "site directory")
    .requiredOption("--name <siteId>", "site id (also the certificate identity)")
    .option("--ca-dir <dir>", "CA directory made by 'qreplica pki create-ca': the site's certificates are issued now")
    .option("--ca-cert <file>", "instead of --ca-dir: only the CA's ca.crt; keys and requests are made here for 'qreplica pki sign' on the CA host")
    .option("--listen <host:port>", "gRPC listen address (port 0: any free port; 0.0.0.0 or [::] for every interface)", hostPortOption(0), "127.0.0.1:7443")
    .option(
      "--san <name...>",
      "DNS names and IP addresses agents and operators dial this site by, put on its certificate; the first is written to run/site.address when --listen is a wildcard",
      [],
    )
    .option("--max-points <n>", "recovery points kept per VM (1 to 100000)", intOption(1, 100_000), 24)
    .option("--accel <accel>", "accelerator for failover and test VMs: auto, kvm or tcg", choiceOption(["auto", "kvm", "tcg"] as const), "auto")
    .option(
      "--launcher <launcher>",
      "who runs failover and test VMs: qemu (the site's own qemu-system processes) or libvirt (domains defined from the replicated spec)",
      choiceOption(["qemu", "libvirt"] as const),
      "qemu",
    )
    .option("--libvirt-uri <uri>", `libvirt connection for --launcher libvirt (default ${DEFAULT_LIBVIRT_URI})`)
    .option("--json", "JSON output", false)
    .action(async (o: InitOptions) => {
      try {
        const dir = resolve(o.dir);
        if (o.libvirtUri !== undefined && o.launcher !== "libvirt")
          throw new InvalidCliArgumentError("--libvirt-uri is used only with --launcher libvirt: add --launcher libvirt or drop --libvirt-uri");
        if (existsSync(siteFile(dir))) throw new Error(`${siteFile(dir)} exists already: this directory is a site`);
        const sans = siteSans(o.listen, o.san);
        mkdirSync(join(dir, "tls"), { recursive: true, mode: 0o700 });
        const certs = await makeSiteCertificates({ name: o.name, tlsDir: join(dir, "tls"), sans, caDir: o.caDir, caCert: o.caCert });
        const config = {
          siteId: o.name,
          listen: o.listen,
          caFile: "tls/ca.crt",
          certFile: `tls/${o.name}.crt`,
          keyFile: `tls/${o.name}.key`,
          ledgerPath: "ledger.sqlite",
          storageRoot: "storage",
          defaultMaxPoints: o.maxPoints,
          accel: o.accel,
          launcher: o.launcher,
          ...(o.libvirtUri !== undefined ? { libvirtUri: o.libvirtUri } : {}),
          ...(o.san[0] ? { advertiseHost: o.san[0] } : {}),
        };
        saveSiteConfig(dir, config);
        const adminCertificate = adminCredentialFiles(dir).certFile;
        emit(o.json, { dir, ...config, certificate: certs.certFile, sans, adminCertificate, pendingCertificates: certs.pending }, () =>
          certs.pending.length
            ? `site '${o.name}' initialised in ${dir}; its keys stay here. Take the requests to the CA host and sign them there:\n` +
              certs.pending.map((p) => `  ${p.signCommand}\n`).join("") +
              `then copy each certificate back to the path after --out, and: qreplica site serve --dir ${dir}`
            : `site '${o.name}' initialised in ${dir} (certificate for ${[o.name, ...sans].join(", ")}, role agent)\n` +
              `local admin certificate: ${adminCertificate} (role admin; the CLI presents it with --dir on this host)\n` +
              `next: qreplica authorize --dir ${dir} --primary PRIMARY; qreplica site serve --dir ${dir}`,
        );
      } catch (err) {
        fail(err, o.json);
      }
    });
  site
    .command("serve")
    .description("run the site: ledger, replica storage, data and control planes over mutual TLS")
    .requiredOption("--dir <dir>", "site directory")
    .option(
      "--metrics-listen <host:port>",
      "serve Prometheus /metrics here (plain HTTP, no authentication: keep it on loopback, e.g. 127.0.0.1:9464); overrides site.json 'metricsListen'; off by default",
      hostPortOption(0),
    )
    .action(async (o: { dir: string; metricsListen?: string }) => {
      const logger = createLogger("qreplica-site");
      try {
        const running = await startSite(resolve(o.dir), logger, { metricsListen: o.metricsListen });
        const stop = async () => {
          logger.info("stopping");
          await running.stop();
          process.exit(0);
        };
        process.once("SIGTERM", () => void stop());
        process.once("SIGINT", () => void stop());
        // systemctl reload: site.json and the TLS files read again (src/site/siteReload.ts).
        process.on("SIGHUP", () => {
          logger.info("SIGHUP: reloading site.json");
          running.reload();
        });
        void running.failed.then(async (err) => {
          logger.fatal({ err, code: err.code }, err.message);
          // Whatever else is still open is closed, but a stop that hangs does not keep a broken site up.
          const give = setTimeout(() => process.exit(SITE_FAILED_EXIT), 10_000);
          await running.stop().catch((e: unknown) => logger.error({ err: e }, "stopping the failed site"));
          clearTimeout(give);
          process.exit(SITE_FAILED_EXIT);
        });
      } catch (err) {
        logger.error({ err }, "site failed to start");
        fail(err, false);
      }
    });
}

/** EX_SOFTWARE: the site stopped itself because it could not go on (see RunningSite.failed). */
const SITE_FAILED_EXIT = 70;

/**
 * The names on the site's certificate besides its id: what the operator says peers dial (--san),
 * the listen host when it is a concrete address, and localhost / 127.0.0.1 for the CLI on the host.
 */
export function siteSans(listen: string, extra: readonly string[]): string[] {
  const host = listenHost(listen);
  const all = [...extra, ...(isWildcardHost(host) ? [] : [host]), "localhost", "127.0.0.1"];
  return [...new Set(all.filter((n) => n !== ""))];
}
