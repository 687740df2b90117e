import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { AgentConfigError, loadAgentConfig } from "../../../replica-agent/daemon/agentConfig.js";
import { makeTmpDir } from "../../../src/common/tmpDir.js";

const tmp = makeTmpDir("qr-agent-config-");
afterAll(() => tmp.cleanup());

function configWith(vmExtra: string): string {
  const path = join(tmp.path, `agent-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(
    path,
    `siteId: site-a
stateDir: state
tls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }
vms:
  - id: vm1
    qmpSocket: qmp.sock
    nbdSocket: nbd.sock
    disks: [{ id: vda, node: vda }]
    replicaSite: 127.0.0.1:7443
    replicaSiteId: site-b
${vmExtra}`,
  );
  return path;
}

describe("agent config", () => {
  it("defaults: 30 s interval, zstd level 1, the zstd frame checksum; paths relative to the file", () => {
    const c = loadAgentConfig(configWith(""));
    expect(c.vms[0]).toMatchObject({ intervalSeconds: 30, compressionLevel: 1, chunkChecksum: "zstd-frame", qmpSocket: join(tmp.path, "qmp.sock") });
  });

  it("scratchDir: unset by default (the capture layer uses <stateDir>/scratch), relative to the file when set", () => {
    expect(loadAgentConfig(configWith("")).vms[0]!.scratchDir).toBeUndefined();
    expect(loadAgentConfig(configWith("    scratchDir: fast/scratch\n")).vms[0]!.scratchDir).toBe(join(tmp.path, "fast/scratch"));
    expect(() => loadAgentConfig(configWith("    scratchDir: 7\n"))).toThrow(/vms\[0\]\.scratchDir: 7 is not a non-empty string; give the scratch directory/);
  });

  it("takes SHA-256 chunk checksums when asked", () => {
    expect(loadAgentConfig(configWith("    chunkChecksum: sha256\n")).vms[0]!.chunkChecksum).toBe("sha256");
  });

  it("names the field and the allowed values for an unknown checksum", () => {
    const path = configWith("    chunkChecksum: md5\n");
    expect(() => loadAgentConfig(path)).toThrow(AgentConfigError);
    expect(() => loadAgentConfig(path)).toThrow(/vms\[0\]\.chunkChecksum: "md5" is not one of zstd-frame, sha256/);
  });
});

describe("agent config: ids and the pinned replica site", () => {
  function config(vm: string): string {
    const path = join(tmp.path, `agent-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(path, `siteId: site-a\nstateDir: state\ntls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }\nvms:\n${vm}`);
    return path;
  }

  it("refuses a VM id that would lead out of the state directory, naming the field and the rule", () => {
    const path = config(`  - { id: ../../evil3, qmpSocket: q, nbdSocket: n, disks: [{ id: vda, node: vda }], replicaSite: "h:1", replicaSiteId: site-b }\n`);
    expect(() => loadAgentConfig(path)).toThrow(AgentConfigError);
    expect(() => loadAgentConfig(path)).toThrow(/vms\[0\]\.id: "\.\.\/\.\.\/evil3" is not a valid VM id: use 1-64 letters/);
  });

  it("refuses a disk id with a path separator", () => {
    const path = config(`  - { id: vm1, qmpSocket: q, nbdSocket: n, disks: [{ id: /etc/x, node: vda }], replicaSite: "h:1", replicaSiteId: site-b }\n`);
    expect(() => loadAgentConfig(path)).toThrow(/disks\[0\]\.id: "\/etc\/x" is not a valid disk id/);
  });

  it("requires replicaSiteId and says what to put there", () => {
    const path = config(`  - { id: vm1, qmpSocket: q, nbdSocket: n, disks: [{ id: vda, node: vda }], replicaSite: "h:1" }\n`);
    expect(() => loadAgentConfig(path)).toThrow(/vms\[0\]\.replicaSiteId: is missing; set it to the replica site's id \(the --name given to 'qreplica site init' there/);
  });
});

describe("agent config: cut-off safety knobs", () => {
  function config(top: string, vmExtra = ""): string {
    const path = join(tmp.path, `agent-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(
      path,
      `siteId: site-a\nstateDir: state\ntls: { caFile: ca.crt, certFile: a.crt, keyFile: a.key }\n${top}vms:\n` +
        `  - { id: vm1, qmpSocket: q, nbdSocket: n, disks: [{ id: vda, node: vda }], replicaSite: "h:1", replicaSiteId: site-b${vmExtra} }\n` +
        `  - { id: vm2, qmpSocket: q2, nbdSocket: n2, disks: [{ id: vda, node: vda }], replicaSite: "h:1", replicaSiteId: site-b }\n`,
    );
    return path;
  }

  it("defaults: cbw-timeout 5 s, 8 MiB free scratch", () => {
    const c = loadAgentConfig(config(""));
    expect(c.vms.map((v) => [v.cbwTimeoutSeconds, v.scratchMinFreeBytes])).toEqual([
      [5, 8 * 1024 * 1024],
      [5, 8 * 1024 * 1024],
    ]);
  });

  it("agent-wide values apply to every VM; a VM's own value overrides them", () => {
    const c = loadAgentConfig(config("cbwTimeoutSeconds: 10\nscratchMinFreeMiB: 64\n", ", cbwTimeoutSeconds: 2, scratchMinFreeMiB: 512"));
    expect(c.vms[0]).toMatchObject({ cbwTimeoutSeconds: 2, scratchMinFreeBytes: 512 * 1024 * 1024 });
    expect(c.vms[1]).toMatchObject({ cbwTimeoutSeconds: 10, scratchMinFreeBytes: 64 * 1024 * 1024 });
  });

  it("refuses values that are no bound or not whole numbers, naming the field, the range and the default", () => {
    expect(() => loadAgentConfig(config("cbwTimeoutSeconds: 0\n"))).toThrow(
      /cbwTimeoutSeconds: 0 is not a whole number from 1 to 60; .*\(0, no bound, is refused\); the default is 5/,
    );
    expect(() => loadAgentConfig(config("", ", cbwTimeoutSeconds: 2.5"))).toThrow(
      /vms\[0\]\.cbwTimeoutSeconds: 2\.5 is not a whole number from 1 to 60; seconds a guest write may wait/,
    );
    expect(() => loadAgentConfig(config("", ", cbwTimeoutSeconds: 600"))).toThrow(AgentConfigError);
    expect(() => loadAgentConfig(config("scratchMinFreeMiB: '8M'\n"))).toThrow(/scratchMinFreeMiB: "8M" is not a whole number from 1 to 1048576; MiB: .*the default is 8/);
    expect(() => loadAgentConfig(config("", ", scratchMinFreeMiB: 0"))).toThrow(/vms\[0\]\.scratchMinFreeMiB: 0 is not a whole number from 1 to 1048576/);
  });

  it("maxCyclesInFlight: 4 by default, a whole number from 1 to 256, the field and range named otherwise", () => {
    expect(loadAgentConfig(config("")).maxCyclesInFlight).toBe(4);
    expect(loadAgentConfig(config("maxCyclesInFlight: 16\n")).maxCyclesInFlight).toBe(16);
    expect(() => loadAgentConfig(config("maxCyclesInFlight: 0\n"))).toThrow(/maxCyclesInFlight: 0 is not a whole number from 1 to 256; .*the default is 4/);
    expect(() => loadAgentConfig(config("maxCyclesInFlight: 2.5\n"))).toThrow(AgentConfigError);
  });
});

describe("agent config: out-of-range values and unknown keys are refused with their path and fix", () => {
  const problemsOf = (path: string) => {
    try {
      loadAgentConfig(path);
    } catch (err) {
      expect(err).toBeInstanceOf(AgentConfigError);
      return (err as AgentConfigError).problems;
    }
    throw new Error("the config was accepted");
  };

  it("compressionLevel 99 (zstd stops at 19) is refused at load, not at every cycle", () => {
    expect(problemsOf(configWith("    compressionLevel: 99\n"))).toEqual([
      {
        path: "vms[0].compressionLevel",
        message: expect.stringMatching(/^99 is not a whole number from 1 to 19; a zstd level: 1 \(fastest\) to 19 \(smallest\); the default is 1$/),
      },
    ]);
    expect(() => loadAgentConfig(configWith("    compressionLevel: 0\n"))).toThrow(/vms\[0\]\.compressionLevel: 0 is not a whole number from 1 to 19/);
    expect(loadAgentConfig(configWith("    compressionLevel: 19\n")).vms[0]!.compressionLevel).toBe(19);
  });

  it("intervalSeconds below 1 s, a negative generation and a replica site without a port are refused", () => {
    const path = configWith("    intervalSeconds: 0\n    generation: -1\n");
    writeFileSync(path, readFileSync(path, "utf8").replace("replicaSite: 127.0.0.1:7443", "replicaSite: replica.example"));
    const p = problemsOf(path);
    expect(p.map((x) => x.path).sort()).toEqual(["vms[0].generation", "vms[0].intervalSeconds", "vms[0].replicaSite"]);
    expect(p.find((x) => x.path === "vms[0].replicaSite")!.message).toMatch(/is not host:port .*write e\.g\. replica\.example\.org:7443/);
  });

  it("an unknown key is refused at its path, with the near miss and the fields allowed there", () => {
    expect(problemsOf(configWith("    compresionLevel: 3\n"))).toEqual([
      {
        path: "vms[0].compresionLevel",
        message: expect.stringMatching(/^unknown field: did you mean 'compressionLevel'\?; the fields here are id, libvirt, qmpSocket, .*compressionLevel/),
      },
    ]);
    const top = join(tmp.path, "top.yaml");
    writeFileSync(top, `${readFileSync(configWith(""), "utf8")}\nstatedir: x\n`);
    expect(problemsOf(top)).toEqual([{ path: "statedir", message: expect.stringMatching(/did you mean 'stateDir'\?/) }]);
    const tls = join(tmp.path, "tls.yaml");
    writeFileSync(tls, readFileSync(configWith(""), "utf8").replace("keyFile: a.key }", "keyFile: a.key, passphrase: x }"));
    expect(problemsOf(tls)).toEqual([{ path: "tls.passphrase", message: expect.stringMatching(/^unknown field; the fields here are caFile, certFile, keyFile, crlFile$/) }]);
    const disk = configWith("");
    writeFileSync(disk, readFileSync(disk, "utf8").replace("node: vda }", "node: vda, size: 1 }"));
    expect(problemsOf(disk).map((x) => x.path)).toEqual(["vms[0].disks[0].size"]);
  });

  it("every problem is reported at once", () => {
    const paths = problemsOf(configWith("    compressionLevel: 99\n    resync: sometimes\n    extra: 1\n")).map((x) => x.path);
    expect(paths.sort()).toEqual(["vms[0].compressionLevel", "vms[0].extra", "vms[0].resync"]);
  });

  it("a bad VM spec names the spec's field", () => {
    expect(() => loadAgentConfig(configWith("    spec: { machine: q35, cpus: 0, memoryMiB: 64, disks: [{ diskId: vda, bus: virtio }], nics: [] }\n"))).toThrow(
      /vms\[0\]\.spec: cpus: must be an integer from 1 to 288, got number 0/,
    );
  });
});

describe("agent config: initialReplication", () => {
  it("now by default; seed; a time with its zone; an export directory relative to the file", () => {
    expect(loadAgentConfig(configWith("")).vms[0]!.initialReplication).toEqual({ kind: "now" });
    expect(loadAgentConfig(configWith("    initialReplication: seed\n")).vms[0]!.initialReplication).toEqual({ kind: "seed" });
    expect(loadAgentConfig(configWith('    initialReplication: { at: "2026-12-05T02:00:00Z" }\n')).vms[0]!.initialReplication).toEqual({
      kind: "at",
      at: new Date("2026-12-05T02:00:00Z"),
    });
    expect(loadAgentConfig(configWith("    initialReplication: { export: media/web1 }\n")).vms[0]!.initialReplication).toEqual({
      kind: "export",
      dir: join(tmp.path, "media/web1"),
    });
  });

  it("refuses anything else, naming the field and the forms it takes", () => {
    expect(() => loadAgentConfig(configWith("    initialReplication: later\n"))).toThrow(/vms\[0\]\.initialReplication.*now, seed, \{ at: .*\{ export:/);
    expect(() => loadAgentConfig(configWith('    initialReplication: { at: "tomorrow" }\n'))).toThrow(/vms\[0\]\.initialReplication/);
    expect(() => loadAgentConfig(configWith("    initialReplication: { export: a, at: b }\n"))).toThrow(AgentConfigError);
  });
});
