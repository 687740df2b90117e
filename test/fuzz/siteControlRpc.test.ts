/**
 * Every unary RPC of a real `qreplica site serve` (ControlService, MonitoringService,
 * PolicyService) called over mutual TLS with an admin certificate (so each request reaches its
 * handler) and fuzzed requests: proto-valid messages whose fields carry path tricks and extreme
 * numbers, and raw bytes that are not a valid message at all. Each call ends OK or with a known
 * status and an explanation (never UNKNOWN or INTERNAL); afterwards the site still answers, its
 * kept point is byte-identical, its ledger intact, and no file appeared outside its directory.
 */
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ControlServiceService } from "../../src/gen/qreplica/v1/control.js";
import { MonitoringServiceService } from "../../src/gen/qreplica/v1/monitoring.js";
import { PolicyServiceService } from "../../src/gen/qreplica/v1/policy.js";
import { startSiteB, type SiteB } from "../e2e/security/siteB.js";
import { issueRole, dialArgs } from "../helpers/controlPlane.js";
import { announceSeed, fuzzParams, fuzzTimeoutMs, hostileIds, type Budget } from "./budget.js";
import { clearStatus, expectKeptPointIntact, expectNoPathEscapes, expectSiteAlive, keptPoint, listTree, type KeptPoint } from "./siteFixture.js";

announceSeed("siteControlRpc");
const CI: Budget = { runs: 600, seconds: 10 };
const VIEWER: Budget = { runs: 200, seconds: 5 };
/** A VM with a relationship, so handlers get past "no such VM" to the fields after the VM id. */
const TARGET = "vm-target";

let site: SiteB;
let client: grpc.Client;
/** A viewer's client: most calls are refused by role, and each refusal is audited with the (hostile) request's VM id. */
let viewer: grpc.Client;
let kept: KeptPoint;
let treeBefore: string[];
beforeAll(async () => {
  site = await startSiteB("qr-fuzz-ctl-");
  kept = await keptPoint(site, "vm-kept");
  await keptPoint(site, TARGET);
  const viewerFiles = await issueRole(site.env.caDir, "vera-viewer", "viewer", join(site.tmp, "people"));
  treeBefore = listTree(site.tmp);
  client = new grpc.Client(site.address, ...dialArgs(site.address, site.admin));
  viewer = new grpc.Client(site.address, ...dialArgs(site.address, viewerFiles));
}, 120_000);
afterAll(async () => {
  client?.close();
  viewer?.close();
  await site?.stop();
});

interface MethodDef {
  path: string;
  requestSerialize(value: never): Buffer;
  requestDeserialize(value: Buffer): object;
}
const METHODS: Array<[string, MethodDef]> = [...Object.entries(ControlServiceService), ...Object.entries(MonitoringServiceService), ...Object.entries(PolicyServiceService)].filter(
  ([, d]) => !(d as { requestStream: boolean }).requestStream,
) as Array<[string, MethodDef]>;

function rawCall(path: string, body: Buffer, as = client): Promise<{ code: grpc.status; details: string }> {
  return new Promise((resolve) => {
    as.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      new grpc.Metadata(),
      { deadline: Date.now() + 30_000 },
      (err) => resolve(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: "" }),
    );
  });
}

/** A non-empty hostile id: the empty string means "latest" or "all" in several requests. */
const nonEmptyHostile = hostileIds.filter((s) => s !== "");
const uint64 = fc.oneof(fc.constantFrom(0n, 1n, 2n ** 63n - 1n, 2n ** 64n - 1n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));
const int32 = fc.oneof(fc.constantFrom(0, -1, 2 ** 31 - 1, -(2 ** 31)), fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }));

/** A value for field `key` of a request whose default (proto3 zero) value is `dflt`. */
function fieldValue(key: string, dflt: unknown): fc.Arbitrary<unknown> {
  if (key === "vmId") return fc.oneof(hostileIds, fc.constant(TARGET));
  if (key === "startVm") return fc.constant(false); // never boot a VM under TCG from a fuzz run
  if (key === "recoveryPointId" || key === "testId" || key === "policyName" || key === "primaryIdentity") return nonEmptyHostile;
  if (key === "disks") return fc.array(fc.record({ diskId: hostileIds, virtualSizeBytes: uint64 }), { maxLength: 3 });
  if (key === "seeds") return fc.array(fc.record({ diskId: hostileIds, imagePath: hostileIds }), { maxLength: 3 });
  if (key === "events") return fc.array(fc.record({ type: hostileIds, dataJson: fc.oneof(fc.json({ maxDepth: 2 }), hostileIds) }), { maxLength: 3 });
  if (key === "specYaml")
    return fc.oneof(
      hostileIds,
      nonEmptyHostile.map((n) => `name: ${JSON.stringify(n)}\nfrequency: 30s\n`),
      fc.json({ maxDepth: 3 }),
    );
  if (key === "window") return fc.option(fc.record({ seconds: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), nanos: int32 }), { nil: undefined });
  if (key === "expectedVersion") return fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
  if (typeof dflt === "string" || dflt === undefined) return hostileIds;
  if (typeof dflt === "bigint") return uint64;
  if (typeof dflt === "number") return int32;
  if (typeof dflt === "boolean") return fc.boolean();
  return fc.constant(dflt);
}

/** A proto-valid request for `def` with every field fuzzed, serialized (undefined: not encodable). */
function requestFor(def: MethodDef): fc.Arbitrary<{ fields: Record<string, unknown>; body: Buffer | undefined }> {
  const defaults = def.requestDeserialize(Buffer.alloc(0)) as Record<string, unknown>;
  const keys = Object.keys(defaults);
  // GetStatusRequest.vmId is optional: absent from the decoded default.
  if (def.path.endsWith("/GetStatus") && !keys.includes("vmId")) keys.push("vmId");
  const shape = Object.fromEntries(keys.map((k) => [k, fieldValue(k, defaults[k])]));
  return fc.record(shape).map((fields) => {
    try {
      return { fields, body: def.requestSerialize({ ...defaults, ...fields } as never) };
    } catch {
      return { fields, body: undefined }; // a value the client library cannot encode never reaches the site
    }
  });
}

const DEFS = new Map(METHODS);
const anyCall = fc
  .constantFrom(...METHODS)
  .chain(([name, def]) =>
    fc.oneof(
      { weight: 4, arbitrary: requestFor(def).map((r) => ({ name, ...r, raw: false })) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 200 }).map((b) => ({ name, fields: {}, body: Buffer.from(b) as Buffer | undefined, raw: true })) },
    ),
  );

describe("fuzz: the site's control, monitoring and policy RPCs", () => {
  it(
    "every method, fuzzed requests as admin: a clear status each time, and the site keeps serving",
    async () => {
      expect(METHODS.length).toBeGreaterThanOrEqual(24);
      const seen = new Set<string>();
      await fc.assert(
        fc.asyncProperty(anyCall, async (c) => {
          if (!c.body) return;
          seen.add(c.name);
          const r = await rawCall(DEFS.get(c.name)!.path, c.body);
          const problem = clearStatus(
            r,
            `${c.name}(${c.raw ? `raw ${c.body.toString("hex")}` : JSON.stringify(c.fields, (_k, v: unknown) => (typeof v === "bigint" ? `${v}n` : v))})`,
          );
          if (problem) throw new Error(problem);
          // A decodable message the handler refused is not a transport error: the site answered it.
          if (!c.raw) expect(r.code).not.toBe(grpc.status.UNAVAILABLE);
        }),
        fuzzParams(CI),
      );
      // The site still answers a valid call, with the caller it saw.
      const who = await rawCall(ControlServiceService.whoAmI.path, Buffer.alloc(0));
      expect(who.code).toBe(grpc.status.OK);
      expectSiteAlive(site);
      console.log(`[fuzz] siteControlRpc: methods reached: ${seen.size}/${METHODS.length}`);
    },
    fuzzTimeoutMs(CI),
  );

  it(
    "every method, fuzzed requests as a viewer: refusals by role (audited) or answers, each with a clear status",
    async () => {
      await fc.assert(
        fc.asyncProperty(anyCall, async (c) => {
          if (!c.body) return;
          const r = await rawCall(DEFS.get(c.name)!.path, c.body, viewer);
          const problem = clearStatus(r, `${c.name} as viewer`);
          if (problem) throw new Error(problem);
        }),
        fuzzParams(VIEWER),
      );
      expect((await rawCall(ControlServiceService.whoAmI.path, Buffer.alloc(0), viewer)).code).toBe(grpc.status.OK);
      expectSiteAlive(site);
    },
    fuzzTimeoutMs(VIEWER),
  );

  it("afterwards: the kept point is byte-identical, the ledger intact, nothing written outside the site", async () => {
    await expectKeptPointIntact(site, kept);
    expectNoPathEscapes(site, treeBefore);
    expectSiteAlive(site);
  });
});

// Findings of this fuzzer, shrunk, kept as literals: each was an INTERNAL status (an untyped error).
describe("fuzz findings: control RPCs", () => {
  const callWith = (name: string, fields: Record<string, unknown>) => {
    const def = DEFS.get(name)!;
    const defaults = def.requestDeserialize(Buffer.alloc(0));
    return rawCall(def.path, def.requestSerialize({ ...defaults, ...fields } as never));
  };

  it("StartTestFailover of a point the VM never had: NOT_FOUND listing the points it has", async () => {
    const r = await callWith("startTestFailover", { vmId: TARGET, recoveryPointId: "0" });
    expect(grpc.status[r.code]).toBe("NOT_FOUND");
    expect(r.details).toContain("VM vm-target has no recovery point 0");
    expect(r.details).toContain("Available points: rp-1");
  });

  it("ListEvents from a position past a signed 64-bit integer: INVALID_ARGUMENT naming the field", async () => {
    const r = await callWith("listEvents", { vmId: TARGET, fromPosition: 18446744073709551615n, limit: 0, streamPrefix: "" });
    expect(grpc.status[r.code]).toBe("INVALID_ARGUMENT");
    expect(r.details).toMatch(/fromPosition 18446744073709551615 is past/);
  });

  it("PrepareReverseReplication with a vmSpecJson that is not JSON: INVALID_ARGUMENT naming the field", async () => {
    const r = await callWith("prepareReverseReplication", {
      vmId: TARGET,
      generation: 0n,
      primarySiteId: "../x",
      primaryIdentity: "CON",
      disks: [],
      seeds: [],
      vmSpecJson: "../x",
    });
    expect(grpc.status[r.code]).toBe("INVALID_ARGUMENT");
    expect(r.details).toMatch(/vmSpecJson is not JSON/);
  });

  it("PrepareReverseReplication of a VM that already replicates here: FAILED_PRECONDITION naming the state, not INTERNAL", async () => {
    const r = await callWith("prepareReverseReplication", {
      vmId: TARGET,
      generation: 0n,
      primarySiteId: "..",
      primaryIdentity: "0",
      disks: [{ diskId: "CON", virtualSizeBytes: 0n }],
      seeds: [],
      vmSpecJson: "",
    });
    expect(grpc.status[r.code]).toBe("FAILED_PRECONDITION");
    expect(r.details).toMatch(/VM vm-target is in state [a-z-]+; enableReplication needs not-enabled/);
  });

  it("bytes that are no protobuf message (a truncated fixed32): INVALID_ARGUMENT naming the call, not grpc-js's INTERNAL", async () => {
    const r = await rawCall(PolicyServiceService.listPolicies.path, Buffer.from([69]));
    expect(grpc.status[r.code]).toBe("INVALID_ARGUMENT");
    expect(r.details).toMatch(/^ListPolicies: the request is not a valid protobuf message/);
  });
});
