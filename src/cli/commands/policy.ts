import { readFileSync } from "node:fs";
import type { Command } from "commander";
import type { GetPolicyResponse, PolicyServiceClient } from "../../gen/qreplica/v1/policy.js";
import { diffPolicies, formatDiff, type PolicyChange } from "../../policy/canonical.js";
import { parsePolicyYaml } from "../../policy/schema.js";
import type { ReplicationPolicy } from "../../policy/types.js";
import { InvalidCliArgumentError } from "../exitCodes.js";
import { policyClient, unary } from "../siteClient.js";
import { emit, fail } from "../output.js";
import { formatTable } from "../table.js";
import { withTarget, type Target } from "../target.js";

const TARGET_HELP = { dir: "the replica site's directory on this host", site: "the replica site's address" };
const ADMIN_HELP = { ...TARGET_HELP, cert: "client certificate with role admin (with --site)" };

/** Runs `fn` with the site's PolicyService client, closes it, and reports errors as every command does. */
async function withClient(o: Target, fn: (client: PolicyServiceClient) => Promise<void>): Promise<void> {
  let client: PolicyServiceClient | undefined;
  try {
    client = policyClient(o);
    await fn(client);
  } catch (err) {
    fail(err, o.json);
  } finally {
    client?.close();
  }
}

const version = (v: string | undefined, what: string): number | undefined => {
  if (v === undefined) return undefined;
  if (!/^[1-9]\d*$/.test(v)) throw new InvalidCliArgumentError(`${what} must be a version number (1, 2, ...), got ${JSON.stringify(v)}`);
  return Number(v);
};

const parsed = (r: GetPolicyResponse): ReplicationPolicy => JSON.parse(r.policyJson) as ReplicationPolicy;

const changeLines = (diff: PolicyChange[]) =>
  formatDiff(diff)
    .split("\n")
    .map((l) => `  ${l}`)
    .join("\n");

/** `qreplica policy apply|list|show|diff` and `qreplica protect VM --policy NAME`, through the site's control endpoint. */
export function registerPolicy(program: Command): void {
  const policy = program
    .command("policy")
    .description("replication policies of a replica site: frequency, retention tiers, compression, bandwidth windows, resync window, RPO alert");

  withTarget(policy.command("apply <file>").description("validate a policy file and record it as a new version on the site (admin); an unchanged spec records nothing"), ADMIN_HELP)
    .option("--dry-run", "validate and show the diff against the latest version; record nothing", false)
    .action((file: string, o: Target & { dryRun: boolean }) =>
      withClient(o, async (client) => {
        const text = readFileSync(file, "utf8");
        const r = await unary(client, client.applyPolicy, { specYaml: text, dryRun: o.dryRun });
        emit(o.json, r, () => {
          const what = !r.changed
            ? `unchanged (version ${r.version} is this spec already)`
            : o.dryRun
              ? `would become version ${r.version} (dry run: nothing recorded)`
              : `version ${r.version} applied`;
          const told = r.notifiedVmIds.length ? `\nagents told (applies from their next cycle): ${r.notifiedVmIds.join(", ")}` : "";
          return `policy ${r.name}: ${what}${r.changed ? `\n${changeLines(r.diff.map((c) => ({ path: c.path, from: c.from, to: c.to })))}` : ""}${told}`;
        });
      }),
    );

  withTarget(policy.command("list").description("the site's policies, their latest version and the VMs bound to them"), TARGET_HELP).action((o: Target) =>
    withClient(o, async (client) => {
      const r = await unary(client, client.listPolicies, {});
      emit(o.json, r, () => {
        const rows = r.policies.map((p) => [p.name, p.latestVersion, p.frequency, p.appliedBy, p.appliedAt?.toISOString() ?? "", p.boundVmIds.join(",") || "-"]);
        rows.push(["default (built in)", "-", "agent config", "-", "-", r.defaultVmIds.join(",") || "-"]);
        return formatTable(["policy", "version", "frequency", "applied by", "applied at", "VMs"], rows);
      });
    }),
  );

  withTarget(policy.command("show <name>").description("a policy in its canonical YAML form, every default written out ('default' is the built-in one)"), TARGET_HELP)
    .option("--version <n>", "a given version (default: the latest)")
    .action((name: string, o: Target & { version?: string }) =>
      withClient(o, async (client) => {
        const r = await unary(client, client.getPolicy, { name, version: version(o.version, "--version") ?? 0 });
        emit(o.json, { ...r, policy: parsed(r), policyJson: undefined }, () => {
          const head =
            r.version === 0
              ? "# built-in default: the agent config's interval and compression apply"
              : `# version ${r.version} of ${r.latestVersion}, applied ${r.appliedAt?.toISOString() ?? "?"} by ${r.appliedBy}`;
          return `${head}\n# bound VMs: ${r.boundVmIds.join(", ") || "none"}\n${r.canonicalYaml}`;
        });
      }),
    );

  withTarget(
    policy.command("diff <name> [file]").description("what changed between two versions (default: the previous and the latest), or between a version and a policy file"),
    TARGET_HELP,
  )
    .option("--from <n>", "the older version (default: the one before --to, or the latest when a file is given)")
    .option("--to <m>", "the newer version (default: the latest)")
    .action((name: string, file: string | undefined, o: Target & { from?: string; to?: string }) =>
      withClient(o, async (client) => {
        if (file && o.to) throw new Error("give --to M or a FILE, not both");
        const latest = await unary(client, client.getPolicy, { name, version: 0 });
        let toPolicy: ReplicationPolicy;
        let toLabel: string;
        let toVersion: number | undefined;
        let fromVersion: number;
        if (file) {
          toPolicy = parsePolicyYaml(readFileSync(file, "utf8"), file);
          toLabel = file;
          fromVersion = version(o.from, "--from") ?? latest.latestVersion;
        } else {
          const to = version(o.to, "--to") ?? latest.latestVersion;
          toPolicy = parsed(to === latest.version ? latest : await unary(client, client.getPolicy, { name, version: to }));
          toLabel = `version ${to}`;
          toVersion = to;
          fromVersion = version(o.from, "--from") ?? Math.max(to - 1, 1);
        }
        const from = fromVersion === latest.version ? latest : await unary(client, client.getPolicy, { name, version: fromVersion });
        const diff = diffPolicies(parsed(from), toPolicy);
        emit(o.json, { name, from: fromVersion, to: toVersion ?? file, diff }, () => `policy ${name}: version ${fromVersion} -> ${toLabel}\n${changeLines(diff)}`);
      }),
    );

  withTarget(
    program.command("protect <vm>").description("bind a VM to a policy on its replica site (admin); the site's binding wins over the agent config's 'policy:'"),
    ADMIN_HELP,
  )
    .requiredOption("--policy <name>", "the policy ('default' for the built-in one)")
    .action((vm: string, o: Target & { policy: string }) =>
      withClient(o, async (client) => {
        const r = await unary(client, client.bindPolicy, { vmId: vm, policyName: o.policy });
        emit(o.json, r, () => {
          const what = r.changed ? `bound to policy ${r.policyName}${r.version ? ` (version ${r.version})` : ""}` : `already bound to policy ${r.policyName}`;
          const agent = r.agentNotified
            ? "its agent was told (applies from the next cycle)"
            : r.relationshipExists
              ? "its agent is not connected; it gets the policy at its next connection"
              : "no replication relationship yet; the agent gets the policy at its first connection";
          return `VM ${vm}: ${what}; ${agent}`;
        });
      }),
    );
}
