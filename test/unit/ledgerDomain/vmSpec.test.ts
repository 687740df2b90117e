import { describe, expect, it } from "vitest";
import {
  enableReplication,
  executeCommand,
  getInMemoryEventStore,
  InvalidCommandInputError,
  InvalidTransitionError,
  initialRelationshipState,
  relationshipStream,
  updateVmSpec,
} from "../../../src/ledger/index.js";
import { enableInput } from "./fixtures.js";

const specV1 = { machine: "q35", cpus: 1, memoryMiB: 64, disks: [{ diskId: "disk0", bus: "ide", bootIndex: 0 }], nics: [] };

describe("the VM spec and its history", () => {
  it("records the spec at enable and every change after, but not a repeat", async () => {
    const store = getInMemoryEventStore();
    await executeCommand(store, "web1", (s) => enableReplication(s, enableInput({ vmSpec: specV1 })));
    expect((await executeCommand(store, "web1", (s) => updateVmSpec(s, { vmSpec: { ...specV1 } }))).events).toEqual([]);
    const bigger = { ...specV1, memoryMiB: 128 };
    const changed = await executeCommand(store, "web1", (s) => updateVmSpec(s, { vmSpec: bigger }));
    expect(changed.events.map((e) => e.type)).toEqual(["VmSpecChanged"]);
    expect(changed.newState.vmSpec).toEqual(bigger);
    // Key order does not make a change.
    const reordered = Object.fromEntries(Object.entries(bigger).reverse());
    expect((await executeCommand(store, "web1", (s) => updateVmSpec(s, { vmSpec: reordered }))).events).toEqual([]);
    const history = (await store.readStream(relationshipStream("web1"))).map((e) =>
      e.type === "ReplicationEnabled" || e.type === "VmSpecChanged" ? (e.data.vmSpec as { memoryMiB: number }).memoryMiB : undefined,
    );
    expect(history.filter((m) => m !== undefined)).toEqual([64, 128]);
  });

  it("refuses a spec for a VM that is not replicated, and a spec that is not an object", () => {
    expect(() => updateVmSpec(initialRelationshipState("web1"), { vmSpec: specV1 })).toThrow(InvalidTransitionError);
    expect(() => updateVmSpec(initialRelationshipState("web1"), { vmSpec: [] as unknown as Record<string, never> })).toThrow(InvalidCommandInputError);
  });
});
