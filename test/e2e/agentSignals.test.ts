import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml, stringify as toYaml } from "yaml";
import { afterEach, describe, expect, it } from "vitest";
import { startStorageDaemonVm, type StorageDaemonVm } from "../../src/qemu/processes/index.js";
import { waitFor } from "../helpers/processes.js";
import { twoSitesPerTest } from "../helpers/twoSites.js";

// The agent's signals as systemd sends them: SIGHUP (systemctl reload) rereads the config and
// applies it while the other VMs replicate on; SIGTERM (systemctl stop) aborts the open cycles and
// exits 0.

const MiB = 1024 * 1024;
const setup = twoSitesPerTest();
let vm2: StorageDaemonVm | undefined;

afterEach(async () => {
  await vm2?.proc.kill();
  vm2 = undefined;
});

interface LogLine {
  msg?: string;
  added?: string[];
  removed?: string[];
  restarted?: string[];
}

const logLines = (file: string): LogLine[] =>
  existsSync(file)
    ? readFileSync(file, "utf8")
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as LogLine)
    : [];

describe("qreplica-agent signals", () => {
  it("SIGHUP adds a VM, refuses a broken config and keeps replicating, removes a VM, restarts a changed one; SIGTERM exits 0", async () => {
    const t = await setup("qr-agent-signals-", { diskBytes: 8 * MiB, intervalSeconds: 1 });
    await t.startSite(t.siteB);
    const agent = t.startAgent();
    const log = join(t.dir, "agent.log");
    const points = async (vmId: string) => (await t.relationship(vmId)).points.length;
    const reloads = () => logLines(log).filter((l) => l.msg === "config reloaded");
    await waitFor("vm1's first point", async () => ((await points("vm1")) > 0 ? true : undefined), 90_000);

    // Add vm2.
    mkdirSync(join(t.dir, "vm2"));
    vm2 = await startStorageDaemonVm(join(t.dir, "vm2"), [{ id: "vda", sizeBytes: 8 * MiB }]);
    await vm2.guestWrite("vda", ["write -P 0x42 0 1M"]);
    const original = parseYaml(readFileSync(t.agentConfig, "utf8")) as { vms: Array<Record<string, unknown>> };
    const vm1 = original.vms[0]!;
    const withVm2 = { ...original, vms: [vm1, { ...vm1, id: "vm2", qmpSocket: vm2.qmpSocketPath, nbdSocket: vm2.nbdSocketPath }] };
    writeFileSync(t.agentConfig, toYaml(withVm2));
    agent.child.kill("SIGHUP");
    await waitFor("vm2's first point after the reload", async () => ((await points("vm2")) > 0 ? true : undefined), 90_000);
    expect(reloads()[0]).toMatchObject({ added: ["vm2"], removed: [], restarted: [] });

    // A broken config is refused: the agent lives on and both VMs keep replicating.
    writeFileSync(t.agentConfig, "vms: [ {id: \n");
    agent.child.kill("SIGHUP");
    await waitFor("the refusal in the agent's log", () => (logLines(log).some((l) => l.msg?.startsWith("reload refused")) ? true : undefined), 30_000);
    const [vm1Before, vm2Before] = [await points("vm1"), await points("vm2")];
    await waitFor(
      "new points of both VMs after the refused reload",
      async () => ((await points("vm1")) > vm1Before && (await points("vm2")) > vm2Before ? true : undefined),
      60_000,
    );
    expect(agent.child.exitCode).toBeNull();

    // Remove vm2: once the reload is logged its replicator has ended, and it commits nothing more.
    writeFileSync(t.agentConfig, toYaml(original));
    agent.child.kill("SIGHUP");
    await waitFor("the second reload", () => (reloads().length === 2 ? true : undefined), 30_000);
    expect(reloads()[1]).toMatchObject({ added: [], removed: ["vm2"], restarted: [] });
    const vm2Final = await points("vm2");
    const vm1After = await points("vm1");
    await waitFor("two more points of vm1", async () => ((await points("vm1")) >= vm1After + 2 ? true : undefined), 60_000);
    expect(await points("vm2")).toBe(vm2Final);

    // A changed setting restarts that VM with it, and it replicates on.
    writeFileSync(t.agentConfig, toYaml({ ...original, vms: [{ ...vm1, intervalSeconds: 2 }] }));
    agent.child.kill("SIGHUP");
    await waitFor("the third reload", () => (reloads().length === 3 ? true : undefined), 30_000);
    expect(reloads()[2]).toMatchObject({ added: [], removed: [], restarted: ["vm1"] });
    const vm1Restarted = await points("vm1");
    await waitFor("a point of vm1 after its restart", async () => ((await points("vm1")) > vm1Restarted ? true : undefined), 60_000);

    agent.child.kill("SIGTERM");
    expect(await agent.exited).toBe(0);
    expect(logLines(log).some((l) => l.msg?.startsWith("stopping"))).toBe(true);
  });
});
