import { readFileSync } from "node:fs";
import { join } from "node:path";
import { writeJsonDurably } from "../../src/common/durableFile.js";

/** What the agent remembers of a VM's replication across restarts: the generation the site last gave it. */
export interface VmReplicationState {
  generation: number;
  replicaSite: string;
}

/** `<stateDir>/<vm>.replication.json`, written durably: a generation lost in a host crash would read as stale. */
export class ReplicationStateFile {
  readonly path: string;

  constructor(stateDir: string, vmId: string) {
    this.path = join(stateDir, `${vmId}.replication.json`);
  }

  /** The saved state; undefined when there is none or it cannot be read (a Hello without a generation). */
  load(): VmReplicationState | undefined {
    try {
      return JSON.parse(readFileSync(this.path, "utf8")) as VmReplicationState;
    } catch {
      return undefined;
    }
  }

  save(state: VmReplicationState): void {
    writeJsonDurably(this.path, state);
  }
}
