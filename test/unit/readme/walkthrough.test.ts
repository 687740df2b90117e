import { parse as parseYaml } from "yaml";
import { describe, expect, it } from "vitest";
import { agentConfigFrom } from "../../../replica-agent/daemon/agentConfig.js";
import { walkthroughSteps } from "../../helpers/readmeWalkthrough.js";

// The fast half of the README walkthrough's test (the slow half runs it: test/e2e/packageInstall.test.ts).
describe("the README walkthrough as written", () => {
  const steps = walkthroughSteps();

  it("is plain qreplica commands: the sites set up and served, the agent started, then queries", () => {
    const lines = steps.flatMap((s) => (s.kind === "command" ? [s.line] : []));
    expect(lines[0]).toBe("qreplica pki create-ca --dir /srv/ca");
    expect(lines.filter((l) => l.endsWith("&"))).toEqual([
      "qreplica site serve --dir /srv/site-a &",
      "qreplica site serve --dir /srv/site-b &",
      "qreplica-agent --config /etc/qreplica/agent.yaml &",
    ]);
    expect(lines.at(-1)).toBe("qreplica ledger verify --dir /srv/site-b");
  });

  it("its agent config loads as written (every key known, every value in range, the spec valid)", () => {
    const file = steps.find((s) => s.kind === "file");
    expect(file).toMatchObject({ path: "/etc/qreplica/agent.yaml" });
    const config = agentConfigFrom(parseYaml((file as { text: string }).text), "/etc/qreplica/agent.yaml");
    expect(config.vms[0]).toMatchObject({ id: "web1", replicaSiteId: "site-b", spec: { machine: "q35", cpus: 2 } });
  });

  it("refuses a block it could not run as written", () => {
    expect(() => walkthroughSteps("<!-- walkthrough -->\n```sh\nrm -rf /srv\n```\n")).toThrow(/only qreplica and qreplica-agent/);
    expect(() => walkthroughSteps('<!-- walkthrough -->\n```sh\nqreplica status --dir "$DIR"\n```\n')).toThrow(/plain words/);
  });
});
