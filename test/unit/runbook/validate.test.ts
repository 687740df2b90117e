import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { RunbookInvalidError, loadRunbook, validateRunbook } from "../../../src/runbook/index.js";
import { makeTmpDir } from "../../helpers/tmpDir.js";

const valid = () => ({
  name: "shop",
  site: { dir: "site-b" },
  failover: "unplanned",
  groups: [
    { name: "db", vms: [{ vm: "db1", point: "rp-7" }], steps: [{ wait: "tcp-port", host: "127.0.0.1", port: 5432, timeoutSeconds: 30 }] },
    {
      vms: ["web1", { vm: "web2", failover: "planned" }],
      steps: [
        { wait: "vm-running" },
        { wait: "serial-log", vm: "db1", pattern: "ready" },
        { confirm: "Check the shop" },
        { hook: "./check.sh", args: ["--port", 8080], env: { MODE: "drill" } },
      ],
    },
  ],
});

function problems(input: unknown): string[] {
  const r = validateRunbook(input, { baseDir: "/rb" });
  if (r.ok) throw new Error("expected problems");
  return r.problems.map((p) => `${p.path}: ${p.message}`);
}

let cleanup: (() => void) | undefined;
afterEach(() => cleanup?.());

describe("validateRunbook", () => {
  it("accepts a runbook and fills the defaults", () => {
    const r = validateRunbook(valid(), { baseDir: "/rb" });
    if (!r.ok) throw new Error(JSON.stringify(r.problems));
    const rb = r.runbook;
    expect(rb.site).toEqual({ dir: "/rb/site-b" });
    expect(rb.groups[0]!.vms).toEqual([{ vm: "db1", failover: "unplanned", point: "rp-7" }]);
    expect(rb.groups[1]!.vms).toEqual([
      { vm: "web1", failover: "unplanned", point: "latest" },
      { vm: "web2", failover: "planned", point: "latest" },
    ]);
    expect(rb.groups[1]!.steps[0]).toEqual({ wait: "vm-running", timeoutSeconds: 300 });
    expect(rb.groups[1]!.steps[3]).toEqual({ hook: "./check.sh", args: ["--port", "8080"], env: { MODE: "drill" }, timeoutSeconds: 300 });
  });

  it("reports every problem at once, each with its path and a fix", () => {
    const input = valid() as any;
    input.groups[1].steps.unshift({ wait: "tcp-port", host: "db", port: 70000 });
    input.groups[1].steps.push({ wait: "guest-agent" }, { wait: "serial-log", vm: "nope", pattern: "([" }, { hook: "x", timout: 3 }, { confirm: "a", hook: "b" });
    input.groups[0].vms.push({ vm: "web1" });
    input.site = { address: "replica:7443", ca: "ca.pem" };
    input.extra = 1;
    const r = validateRunbook(input, { baseDir: "/rb" });
    if (r.ok) throw new Error("expected problems");
    const text = r.problems.map((p) => `${p.path}: ${p.message}`);
    expect(text).toEqual(
      expect.arrayContaining([
        "groups[1].steps[0].port: must be 1-65535, not 70000",
        "groups[1].steps[5].wait: 'guest-agent' is not supported yet: the site does not expose a failed-over VM's guest agent channel",
        "groups[1].steps[6].vm: VM 'nope' is not failed over by this group or an earlier one",
        expect.stringMatching(/^groups\[1\]\.steps\[6\]\.pattern: not a valid regular expression/),
        "groups[1].steps[7].timout: unknown key",
        "groups[1].steps[8]: has confirm and hook",
        "groups[1].vms[0].vm: VM 'web1' is already in groups[0].vms[1]",
        "site.cert: missing cert file",
        "site.key: missing key file",
        "extra: unknown key",
      ]),
    );
    expect(r.problems.find((p) => p.path === "groups[1].steps[7].timout")?.fix).toBe("did you mean 'timeoutSeconds'?");
    expect(r.problems.find((p) => p.path.endsWith(".port"))?.fix).toBe("port: 5432");
    expect(r.problems.every((p) => p.fix)).toBe(true);
  });

  it("asks for a failover mode when neither the VM nor the runbook has one", () => {
    const input = valid() as any;
    delete input.failover;
    expect(problems(input)).toEqual(["groups[0].vms[0].failover: missing", "groups[1].vms[0].failover: missing"]);
  });

  it("refuses a serial-log wait on a VM of a later group, and a runbook without VMs", () => {
    const input = valid() as any;
    input.groups[0].steps.push({ wait: "serial-log", vm: "web1", pattern: "x" });
    expect(problems(input)).toEqual(["groups[0].steps[1].vm: VM 'web1' is not failed over by this group or an earlier one"]);
    expect(problems({ name: "x", site: { dir: "/s" }, groups: [{ steps: [{ confirm: "go" }] }] })).toEqual(["groups: no VM to fail over"]);
    expect(problems("just text")).toEqual(["(top level): a runbook is a YAML mapping with name, site and groups"]);
  });

  it("checks timeouts, failover modes, hook env and a site with both dir and address", () => {
    const input = valid() as any;
    input.groups[0].steps[0].timeoutSeconds = -1;
    input.groups[0].vms[0].failover = "hot";
    input.groups[1].steps[3].env = { QREPLICA_VM: "x", "bad name": "y" };
    input.site = { dir: "/a", address: "b:1" };
    expect(problems(input)).toEqual([
      "site: has both dir and address",
      'groups[0].vms[0].failover: must be one of test, planned, unplanned, not "hot"',
      "groups[0].steps[0].timeoutSeconds: must be a number of seconds above 0 and at most 86400, not -1",
      "groups[1].steps[3].env.QREPLICA_VM: QREPLICA_* variables are set by the runbook",
      "groups[1].steps[3].env.bad name: not an environment variable name",
    ]);
  });
});

describe("loadRunbook", () => {
  it("resolves paths against the file's directory and locates problems by line", () => {
    const tmp = makeTmpDir("qr-rb-");
    cleanup = tmp.cleanup;
    const file = join(tmp.path, "rb.yaml");
    writeFileSync(
      file,
      [
        "name: shop",
        "site:",
        "  dir: ./site",
        "failover: test",
        "groups:",
        "  - vms: [db1]",
        "    steps:",
        "      - wait: tcp-port",
        "        host: db",
        "        port: 0",
        "",
      ].join("\n"),
    );
    const err = (() => {
      try {
        loadRunbook(file);
      } catch (e) {
        return e;
      }
    })() as RunbookInvalidError;
    expect(err).toBeInstanceOf(RunbookInvalidError);
    expect(err.code).toBe("RUNBOOK_INVALID");
    expect(err.problems).toEqual([{ path: "groups[0].steps[0].port", message: "must be 1-65535, not 0", fix: "port: 5432", line: 10 }]);
    expect(err.message).toContain("groups[0].steps[0].port (line 10): must be 1-65535, not 0 (port: 5432)");

    writeFileSync(file, "name: shop\nsite: {dir: ./site}\nfailover: test\ngroups: [{vms: [db1]}]\n");
    expect(loadRunbook(file)).toMatchObject({ site: { dir: join(tmp.path, "site") }, baseDir: tmp.path });

    writeFileSync(file, "name: shop\ngroups: [\n");
    expect(() => loadRunbook(file)).toThrow(/\(yaml\) \(line \d\)/);
  });
});
