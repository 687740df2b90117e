import * as grpc from "@grpc/grpc-js";
import { errorMessage } from "../../common/errors.js";
import type { PolicyServiceServer, PolicySummary } from "../../gen/qreplica/v1/policy.js";
import { relationshipStream } from "../../ledger/index.js";
import { policyToYaml } from "../../policy/canonical.js";
import { parsePolicyYaml, DEFAULT_POLICY_NAME } from "../../policy/schema.js";
import { formatDuration } from "../../policy/units.js";
import type { PolicyVersion } from "../../policy/types.js";
import type { SiteContext } from "../siteContext.js";
import { actorMetadata } from "./caller.js";
import { guardedWith } from "./guard.js";

/** Policy errors are the caller's to fix (INVALID_ARGUMENT, NOT_FOUND), never server faults. */
function grpcCodeOf(err: unknown): grpc.status {
  const explicit = (err as { grpcCode?: number }).grpcCode;
  if (explicit !== undefined) return explicit;
  const code = (err as { code?: unknown }).code;
  if (code === "INVALID_POLICY" || code === "INVALID_ID") return grpc.status.INVALID_ARGUMENT;
  if (code === "UNKNOWN_POLICY" || code === "UNKNOWN_POLICY_VERSION") return grpc.status.NOT_FOUND;
  if (code === "WRONG_EXPECTED_VERSION") return grpc.status.ABORTED;
  return grpc.status.INTERNAL;
}

const invalid = (message: string) => Object.assign(new Error(message), { grpcCode: grpc.status.INVALID_ARGUMENT });

/**
 * PolicyService on the site's control endpoint, behind the same role guard and refusal audit as
 * ControlService: viewers read policies, admins apply and bind them, agents are refused. An apply
 * or a binding that changes a VM's effective policy is pushed to its agent over the open stream.
 */
export function policyService(ctx: SiteContext): PolicyServiceServer {
  const guarded = guardedWith(ctx.logger, grpcCodeOf, ctx.refusals, () => ctx.revocations);
  const policies = ctx.policies;
  const book = policies.book;

  /** Pushes the VMs' effective policy to their connected agents; returns the VMs told. */
  const push = async (vmIds: string[]): Promise<string[]> => {
    policies.changed(vmIds);
    const told: string[] = [];
    for (const vmId of vmIds) {
      const session = ctx.sessionFor(vmId);
      if (!session) continue;
      try {
        await session.sendPolicy(policies.wireFor(vmId));
        told.push(vmId);
      } catch (err) {
        // The agent gets it at its next Hello: the binding and the version are in the ledger.
        ctx.logger.warn({ vm: vmId, err: errorMessage(err) }, "could not push the changed policy to the agent");
      }
    }
    return told;
  };

  const builtIn = (): PolicyVersion => ({ policy: policies.builtInDefault(), version: 0, appliedAt: "", appliedBy: "" });

  return {
    applyPolicy: guarded("admin", async (req, caller) => {
      if (!req.specYaml.trim()) throw invalid("ApplyPolicy: the policy's YAML is empty; pass the file's text (e.g. 'qreplica policy apply gold.yaml')");
      const policy = parsePolicyYaml(req.specYaml);
      const outcome = await book.apply(policy, actorMetadata(caller), { dryRun: req.dryRun });
      const notified = outcome.changed && !req.dryRun ? await push(book.boundTo(outcome.name)) : [];
      if (outcome.changed && !req.dryRun) ctx.logger.info({ policy: outcome.name, version: outcome.version, by: caller.identity, notified }, "policy applied");
      return {
        name: outcome.name,
        version: outcome.version,
        changed: outcome.changed,
        diff: outcome.diff.map((c) => ({ path: c.path, from: c.from, to: c.to })),
        canonicalYaml: policyToYaml(outcome.policy),
        notifiedVmIds: notified,
        dryRun: req.dryRun,
      };
    }),
    listPolicies: guarded("viewer", async () => {
      const summaries: PolicySummary[] = book.names().map((name) => {
        const v = book.get(name);
        const f = v.policy.frequency;
        return {
          name,
          latestVersion: v.version,
          appliedAt: new Date(v.appliedAt),
          appliedBy: v.appliedBy,
          frequency: f.kind === "continuous" ? "continuous" : formatDuration(f.seconds),
          boundVmIds: book.boundTo(name),
        };
      });
      const bound = new Set(
        book
          .allBindings()
          .filter((b) => b.policyName !== DEFAULT_POLICY_NAME)
          .map((b) => b.vmId),
      );
      // The status read model lists every VM with a relationship, without reading the ledger.
      await ctx.readModels.refresh();
      const known = new Set([...ctx.readModels.vmIds(), ...book.allBindings().map((b) => b.vmId)]);
      return { policies: summaries, defaultVmIds: [...known].filter((vm) => !bound.has(vm)).sort() };
    }),
    getPolicy: guarded("viewer", async (req) => {
      if (!req.name) throw invalid("GetPolicy: give a policy name ('qreplica policy list' lists them)");
      const isDefault = req.name === DEFAULT_POLICY_NAME;
      const v = isDefault ? builtIn() : book.get(req.name, req.version);
      const latest = isDefault ? 0 : book.get(req.name).version;
      return {
        name: req.name,
        version: v.version,
        latestVersion: latest,
        appliedAt: v.appliedAt ? new Date(v.appliedAt) : undefined,
        appliedBy: v.appliedBy,
        canonicalYaml: policyToYaml(v.policy),
        policyJson: JSON.stringify(v.policy),
        boundVmIds: book.boundTo(req.name),
      };
    }),
    bindPolicy: guarded("admin", async (req, caller) => {
      if (!req.vmId) throw invalid("BindPolicy: a VM id is required");
      if (!req.policyName) throw invalid(`BindPolicy: a policy name is required ('qreplica protect ${req.vmId} --policy NAME')`);
      const { changed } = await policies.bind(req.vmId, req.policyName, actorMetadata(caller));
      const notified = changed ? await push([req.vmId]) : [];
      const exists = (await ctx.store.streamVersion(relationshipStream(req.vmId))) !== undefined;
      if (changed) ctx.logger.info({ vm: req.vmId, policy: req.policyName, by: caller.identity }, "VM bound to policy");
      return {
        vmId: req.vmId,
        policyName: req.policyName,
        version: policies.effectivePolicyVersion(req.vmId).version,
        changed,
        agentNotified: notified.length > 0,
        relationshipExists: exists,
      };
    }),
  };
}
