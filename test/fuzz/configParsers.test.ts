/**
 * Hostile input to the YAML/JSON parsers: the agent config, the site config (site.json), policies
 * and runbooks. Whatever the document, the parser returns a config or throws its own typed error
 * (QreplicaError with a literal code); a document one field away from a valid one that is refused
 * gets an error naming that field.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { stringify } from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { AgentConfigError, loadAgentConfig } from "../../replica-agent/daemon/agentConfig.js";
import type { QreplicaError } from "../../src/common/errors.js";
import { makeTmpDir } from "../../src/common/tmpDir.js";
import { InvalidPolicyError } from "../../src/policy/errors.js";
import { parsePolicyYaml, policyFromSpec } from "../../src/policy/schema.js";
import { RunbookInvalidError, RunbookUnreadableError } from "../../src/runbook/errors.js";
import { loadRunbook, validateRunbook } from "../../src/runbook/validate.js";
import { SiteConfigError } from "../../src/site/errors.js";
import { loadSiteConfig } from "../../src/site/siteConfig.js";
import { announceSeed, fuzzParams, fuzzTimeoutMs, type Budget } from "./budget.js";
import { fieldName, mutatedDoc, mutationOf, type Mutation } from "./mutate.js";

announceSeed("configParsers");
const tmp = makeTmpDir("qr-fuzz-config-");
afterAll(() => tmp.cleanup());
const CI: Budget = { runs: 400, seconds: 3 };

let n = 0;
/** `text` in the file `name` (overwritten run after run: the long form makes millions of runs). */
function file(name: string, text: string): string {
  const p = join(tmp.path, name);
  writeFileSync(p, text);
  return p;
}

/** Runs `f`; a throw must be an instance of `typed` (a QreplicaError). Returns the error, if any. */
function outcome(f: () => unknown, ...typed: Array<abstract new (...a: never[]) => QreplicaError>): QreplicaError | undefined {
  try {
    f();
    return undefined;
  } catch (err) {
    if (!typed.some((t) => err instanceof t)) {
      throw new Error(`expected ${typed.map((t) => t.name).join(" or ")}, got ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}`, { cause: err });
    }
    expect((err as QreplicaError).code).toMatch(/^[A-Z_]+$/);
    return err as QreplicaError;
  }
}

/** Text that is YAML near `doc`, or plain noise, or YAML tricks (aliases, tags, deep nesting). */
function yamlTexts(doc: unknown): fc.Arbitrary<string> {
  return fc.oneof(
    { weight: 6, arbitrary: mutatedDoc(doc).map((d) => stringify(d) ?? "") },
    { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 200 }) },
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        "",
        "~",
        "- a\n- b",
        "a: &x [*x]",
        "a: *undefinedAlias",
        "!!binary aGVsbG8=",
        "? [a]\n: b",
        "a: !!str 1",
        "a: 1\na: 2",
        "[".repeat(2000),
        `x: &a [1]\n${Array.from(
          { length: 12 },
          (_, i) =>
            `l${i}: &a${i} [${Array(9)
              .fill(i === 0 ? "*a" : `*a${i - 1}`)
              .join(",")}]`,
        ).join("\n")}`,
        "%YAML 9.9\n---\na: 1",
        "---\na: 1\n---\nb: 2",
        "\uFEFFname: x",
      ),
    },
  );
}

function checkNamesField(err: QreplicaError | undefined, m: Mutation, text: string): void {
  const field = fieldName(m.path);
  if (!err || field === undefined || m.op === "add") return;
  // Cross-field rules may name the other side of the rule; the touched field's parent is named then.
  const named = m.path.filter((s): s is string => typeof s === "string");
  const msg = err.message;
  if (!named.some((s) => msg.includes(s))) {
    throw new Error(`the error does not name ${m.path.join(".")} (op ${m.op}, value ${JSON.stringify(m.value)}):\n${msg}\n--- document:\n${text}`);
  }
}

const AGENT = {
  siteId: "site-a",
  stateDir: "state",
  tls: { caFile: "ca.crt", certFile: "a.crt", keyFile: "a.key" },
  cbwTimeoutSeconds: 5,
  vms: [
    {
      id: "vm1",
      qmpSocket: "qmp.sock",
      nbdSocket: "nbd.sock",
      guestAgentSocket: "qga.sock",
      disks: [{ id: "vda", node: "vda" }],
      replicaSite: "127.0.0.1:7443",
      replicaSiteId: "site-b",
      intervalSeconds: 30,
      chunkChecksum: "sha256",
      policy: "gold",
      // The VM spec the replica site launches the VM from (src/model/vmSpec.ts).
      spec: {
        machine: "q35",
        cpus: 1,
        memoryMiB: 64,
        disks: [{ diskId: "vda", bus: "virtio", bootIndex: 0 }],
        nics: [{ id: "net0", model: "virtio-net-pci", mac: "52:54:00:12:34:56" }],
        extraArgs: ["-rtc", "base=utc"],
      },
    },
  ],
};

const SITE = {
  siteId: "site-b",
  listen: "127.0.0.1:0",
  caFile: "tls/ca.crt",
  certFile: "tls/site.crt",
  keyFile: "tls/site.key",
  ledgerPath: "ledger.sqlite",
  storageRoot: "storage",
  defaultMaxPoints: 24,
  defaultRetention: { tiers: [{ everySeconds: 0, keepForSeconds: 3600 }], minPoints: 2 },
  accel: "tcg",
  health: { rpoAlertSeconds: 60 },
};

const POLICY = {
  name: "gold",
  frequency: "30s",
  retention: {
    minPoints: 4,
    tiers: [
      { every: "all", keepFor: "2h" },
      { every: "1h", keepFor: "48h" },
    ],
  },
  applicationConsistent: { every: "4h", freezeTimeout: "10s" },
  compressionLevel: 3,
  bandwidth: [{ limit: "50MiB/s", window: { days: ["mon", "tue"], from: "08:00", to: "18:00" } }],
  initialReplication: "now",
  resync: { mode: "automatic", window: { from: "18:30", to: "06:00" } },
  rpoAlert: "15m",
};

const RUNBOOK = {
  name: "shop",
  site: { dir: "/var/lib/qreplica/site-b" },
  failover: "unplanned",
  groups: [
    {
      name: "database",
      vms: [{ vm: "db1", point: "latest" }, "db2"],
      steps: [
        { wait: "vm-running", timeoutSeconds: 60 },
        { wait: "tcp-port", host: "10.20.0.10", port: 5432 },
        { hook: "./hooks/check.sh", args: ["--timeout", 30], env: { A: "b" } },
        { confirm: "Does it work?" },
      ],
    },
  ],
};

describe("fuzz: agent config (YAML)", () => {
  it(
    "any text gives an AgentConfig or an AgentConfigError",
    () => {
      fc.assert(
        fc.property(yamlTexts(AGENT), (text) => {
          outcome(() => loadAgentConfig(file("agent.yaml", text)), AgentConfigError);
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );

  it(
    "one field off a valid config: refused naming that field",
    () => {
      fc.assert(
        fc.property(mutationOf(AGENT), (m) => {
          const text = stringify(m.doc) ?? "";
          checkNamesField(
            outcome(() => loadAgentConfig(file("agent.yaml", text)), AgentConfigError),
            m,
            text,
          );
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

describe("fuzz: site config (site.json)", () => {
  const siteDir = (text: string) => {
    const dir = join(tmp.path, "site");
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "site.json"), text);
    return dir;
  };
  it(
    "any JSON or text gives a SiteConfig or a SiteConfigError",
    () => {
      const texts = fc.oneof(
        mutatedDoc(SITE).map((d) => JSON.stringify(d) ?? ""),
        fc.string({ unit: "binary", maxLength: 100 }),
        fc.constantFrom("null", "[]", "1", '"x"', "{}"),
      );
      fc.assert(
        fc.property(texts, (text) => {
          outcome(() => loadSiteConfig(siteDir(text)), SiteConfigError);
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );

  it(
    "one field off a valid site.json: refused naming that field",
    () => {
      fc.assert(
        fc.property(mutationOf(SITE), (m) => {
          const text = JSON.stringify(m.doc) ?? "";
          checkNamesField(
            outcome(() => loadSiteConfig(siteDir(text)), SiteConfigError),
            m,
            text,
          );
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

describe("fuzz: policies", () => {
  it(
    "any text gives a policy or an InvalidPolicyError",
    () => {
      fc.assert(
        fc.property(yamlTexts(POLICY), (text) => {
          outcome(() => parsePolicyYaml(text, "fuzz.yaml"), InvalidPolicyError);
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );

  it(
    "one field off a valid policy: refused with a problem at that field's path",
    () => {
      fc.assert(
        fc.property(mutationOf(POLICY), (m) => {
          const err = outcome(() => policyFromSpec(m.doc, "fuzz.yaml"), InvalidPolicyError);
          checkNamesField(err, m, JSON.stringify(m.doc));
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

describe("fuzz: runbooks", () => {
  it(
    "any text gives a runbook or a RunbookInvalidError with located problems",
    () => {
      fc.assert(
        fc.property(yamlTexts(RUNBOOK), (text) => {
          const err = outcome(() => loadRunbook(file("runbook.yaml", text)), RunbookInvalidError, RunbookUnreadableError);
          if (err instanceof RunbookInvalidError) expect(err.problems.length).toBeGreaterThan(0);
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );

  it(
    "one field off a valid runbook: validateRunbook reports a problem at that field, never throws",
    () => {
      fc.assert(
        fc.property(mutationOf(RUNBOOK), (m) => {
          const r = validateRunbook(m.doc, { baseDir: tmp.path });
          if (r.ok) return;
          const field = fieldName(m.path);
          if (field === undefined || m.op === "add") return;
          const named = m.path.filter((s): s is string => typeof s === "string");
          const text = r.problems.map((p) => `${p.path}: ${p.message}`).join("\n");
          if (!named.some((s) => text.includes(s))) throw new Error(`no problem names ${m.path.join(".")}:\n${text}`);
        }),
        fuzzParams(CI),
      );
    },
    fuzzTimeoutMs(CI),
  );
});

// Findings of these fuzzers, shrunk, kept as literals.
describe("fuzz findings: config parsers", () => {
  it("agent config: a VM id given as a mapping with a toString key is an AgentConfigError, not a TypeError", () => {
    const text =
      "siteId: site-a\nstateDir: state\ntls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }\nvms:\n  - id:\n      toString: null\n    qmpSocket: qmp.sock\n    nbdSocket: nbd.sock\n    disks: [{ id: vda, node: vda }]\n    replicaSite: 127.0.0.1:7443\n    replicaSiteId: site-b\n";
    expect(() => loadAgentConfig(file("agent.yaml", text))).toThrow(AgentConfigError);
    expect(() => loadAgentConfig(file("agent.yaml", text))).toThrow(/vms\[0\]\.id: a mapping is not a valid VM id/);
  });

  it("site config: site.json holding null (or an array) is a SiteConfigError, not a TypeError", () => {
    for (const text of ["null", "[]", "7"]) {
      const dir = join(tmp.path, `site-null-${n++}`);
      mkdirSync(dir);
      writeFileSync(join(dir, "site.json"), text);
      expect(() => loadSiteConfig(dir)).toThrow(SiteConfigError);
      expect(() => loadSiteConfig(dir)).toThrow(/must hold a JSON object of fields/);
    }
  });

  it("site config: a retention tier's seconds given as an object with a toString key names the field", () => {
    const dir = join(tmp.path, `site-tier-${n++}`);
    mkdirSync(dir);
    writeFileSync(join(dir, "site.json"), JSON.stringify({ ...SITE, defaultRetention: { tiers: [{ everySeconds: 0, keepForSeconds: [{ toString: null }] }], minPoints: 2 } }));
    expect(() => loadSiteConfig(dir)).toThrow(SiteConfigError);
    expect(() => loadSiteConfig(dir)).toThrow(/defaultRetention\.tiers\[0\]\.keepForSeconds: a list is not a number above 0/);
  });

  it("runbook: an alias to an anchor never set, or an alias bomb, is a RunbookInvalidError", () => {
    const err = outcome(() => loadRunbook(file("runbook.yaml", "a: *undefinedAlias")), RunbookInvalidError) as RunbookInvalidError;
    expect(err.problems[0]).toMatchObject({ path: "(yaml)", message: expect.stringMatching(/Unresolved alias.*undefinedAlias/) });
    const bomb = `x: &a [1]\n${Array.from(
      { length: 12 },
      (_, i) =>
        `l${i}: &a${i} [${Array(9)
          .fill(i === 0 ? "*a" : `*a${i - 1}`)
          .join(",")}]`,
    ).join("\n")}`;
    expect(() => loadRunbook(file("runbook.yaml", bomb))).toThrow(RunbookInvalidError);
  });
});
