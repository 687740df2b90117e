import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { describe, expect, it } from "vitest";
import { AGENT_BIN, binNodeFlags, CLI_BIN } from "../../helpers/processes.js";

const ROOT = resolve(import.meta.dirname, "../../..");

describe("the node flags the bins start with", () => {
  it("both bins start node with the same heap flags: a small young generation (4 MiB semi-spaces, not Node 24's 64), an old generation that may double before V8 marks it, and gc() for the chunk path", () => {
    expect(binNodeFlags(CLI_BIN)).toEqual(["--max-semi-space-size=4", "--heap-growing-percent=100", "--expose-gc"]);
    expect(binNodeFlags(AGENT_BIN)).toEqual(binNodeFlags(CLI_BIN));
  });

  it("the systemd units start the bins themselves, so the services get those flags", () => {
    expect(readFileSync(resolve(ROOT, "systemd/qreplica-agent.service"), "utf8")).toMatch(/^ExecStart=\/opt\/qreplica\/bin\/qreplica-agent /m);
    expect(readFileSync(resolve(ROOT, "systemd/qreplica-site@.service"), "utf8")).toMatch(/^ExecStart=\/opt\/qreplica\/bin\/qreplica site serve /m);
  });
});
