import net from "node:net";
import { getInMemoryEventStore, type EventStore } from "../../../src/ledger/index.js";
import {
  executePlan,
  planRunbook,
  readRun,
  resumeOptions,
  validateRunbook,
  type ExecuteOptions,
  type ProgressEvent,
  type RunRecord,
  type Runbook,
} from "../../../src/runbook/index.js";
import { FakeSite } from "./fakeSite.js";

export function makeRunbook(input: Record<string, unknown>, baseDir = "/rb"): Runbook {
  const r = validateRunbook({ name: "shop", site: { dir: "/sites/b" }, failover: "unplanned", ...input }, { baseDir });
  if (!r.ok) throw new Error(JSON.stringify(r.problems));
  return r.runbook;
}

/** A port nothing listens on (until the test listens on it). */
export async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

export async function listen(port: number): Promise<net.Server> {
  const srv = net.createServer((s) => s.end());
  await new Promise<void>((r) => srv.listen(port, "127.0.0.1", r));
  return srv;
}

/** Runs (or resumes) a runbook against a fake site and an in-memory ledger, collecting progress. */
export class Harness {
  readonly store: EventStore = getInMemoryEventStore();
  readonly progress: ProgressEvent[] = [];

  constructor(
    readonly runbook: Runbook,
    readonly site: FakeSite,
  ) {}

  run(opts: { test?: boolean } & Partial<ExecuteOptions> = {}) {
    const plan = planRunbook(this.runbook, { test: opts.test ?? false });
    return executePlan({ plan, target: this.site, store: this.store, file: "shop.yaml", pollIntervalMs: 50, onProgress: (e) => this.progress.push(e), ...opts });
  }

  async resume(runId: string, opts: { test?: boolean } & Partial<ExecuteOptions> = {}) {
    const resume = (await readRun(this.store, runId))!;
    const plan = planRunbook(this.runbook, resumeOptions(resume, this.runbook.name, opts.test ?? false));
    return executePlan({ plan, target: this.site, store: this.store, file: "shop.yaml", pollIntervalMs: 50, onProgress: (e) => this.progress.push(e), resume, ...opts });
  }

  async record(runId: string): Promise<RunRecord> {
    return (await readRun(this.store, runId))!;
  }

  async types(runId: string): Promise<string[]> {
    return (await this.store.readStream(`runbook-${runId}`)).map((e) => e.type);
  }
}
