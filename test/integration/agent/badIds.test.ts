import { spawnSync } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { makeTmpDir } from "../../helpers/tmpDir.js";
import { AGENT } from "../../helpers/processes.js";
import { createCa, issueCertificate } from "../../../src/transport/pki.js";

const tmp = makeTmpDir("qr-bad-ids-");
afterAll(() => tmp.cleanup());

/** Every path under `dir`, relative to it. */
function tree(dir: string, prefix = ""): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const rel = join(prefix, e.name);
    return e.isDirectory() ? [rel + "/", ...tree(join(dir, e.name), rel)] : [rel];
  });
}

describe("the agent refuses a malformed VM id at load (real process)", () => {
  it("exits non-zero naming the field, and writes nothing anywhere (it used to run on and write its state files outside stateDir)", async () => {
    // stateDir two levels down, so that ../../evil3 would land inside the tmp dir where we can see it.
    const root = tmp.path;
    const stateDir = join(root, "a", "b", "state");
    mkdirSync(join(root, "a", "b"), { recursive: true });
    const configPath = join(root, "a", "b", "agent.yaml");
    writeFileSync(
      configPath,
      `siteId: site-a
stateDir: ${stateDir}
tls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }
vms:
  - id: ../../evil3
    qmpSocket: ${join(root, "qmp.sock")}
    nbdSocket: ${join(root, "nbd.sock")}
    disks: [{ id: vda, node: vda }]
    replicaSite: 127.0.0.1:1
    replicaSiteId: site-b
`,
    );
    // Valid TLS files: the config is the only thing wrong, so an agent that accepted the id would run on.
    const ca = await createCa({ dir: join(root, "ca"), name: "test-ca" });
    const issued = await issueCertificate({ caDir: ca.dir, name: "agent-a", dir: join(root, "tls") });
    writeFileSync(
      configPath,
      readFileSync(configPath, "utf8").replace(
        "tls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }",
        `tls: { caFile: ${issued.caFile}, certFile: ${issued.certFile}, keyFile: ${issued.keyFile} }`,
      ),
    );
    const before = tree(root);
    const r = spawnSync(process.execPath, ["--import", "tsx", AGENT, "--config", configPath], { cwd: resolve(import.meta.dirname, "../../.."), encoding: "utf8", timeout: 60_000 });
    expect(r.status).toBe(2); // invalid input, as the CLI's
    expect(r.stderr).toContain('vms[0].id: "../../evil3" is not a valid VM id');
    expect(tree(root)).toEqual(before); // no state dir, no evil3.* anywhere
  });
});
