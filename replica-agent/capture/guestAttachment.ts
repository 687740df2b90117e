import type { QmpClient } from "../../src/qemu/qmp/index.js";
import { PREFIX } from "./naming.js";

/**
 * How a guest device reaches a disk node, which decides where the copy-before-write filter goes.
 * It belongs right above the disk node (the node whose bitmaps record the changes), as QEMU's own
 * backup job puts it: below any filter the operator configured, so that our copies and reads are
 * not charged to the guest's I/O limits (a throttle group) and the guest's writes are.
 *
 *   device -> disk                       the device's drive is swapped (qom-set drive)
 *   device -> throttle [-> filter ...] -> disk
 *                                        the throttle's file child is swapped (blockdev-reopen)
 */
export interface GuestDevice {
  /** QOM path of the device's block backend. */
  qdev: string;
  /** Set when a throttle filter, not the device, is the disk node's parent. */
  filter?: ThrottleFilter;
}

export interface ThrottleFilter {
  node: string;
  /** The filter's one option besides its child: blockdev-reopen must restate it. */
  throttleGroup: string;
}

/**
 * `device`: the copy-before-write graph can be built. `fallback`: a guest device sits above the
 * disk (`qdev`) but the graph cannot be built there; the cut-off uses blockdev-backup sync=none.
 */
export type Attachment = { device: GuestDevice; fallback?: undefined; qdev: string } | { device?: undefined; fallback: string; qdev: string };

interface BlockGraph {
  nodes: Array<{ id: number; name: string; type: string }>;
  edges: Array<{ parent: number; child: number; name: string }>;
}

interface NamedNode {
  "node-name": string;
  drv: string;
  file: string;
}

export async function blockGraph(qmp: QmpClient): Promise<BlockGraph | undefined> {
  try {
    return await qmp.execute<BlockGraph>("x-debug-query-block-graph");
  } catch {
    return undefined;
  }
}

/** The parents of `node` in the block graph, with the child role they hold it in. */
export function parentsOf(graph: BlockGraph, node: string): Array<{ name: string; type: string; role: string }> {
  const self = graph.nodes.find((n) => n.name === node && n.type === "block-driver");
  if (!self) return [];
  return graph.edges
    .filter((e) => e.child === self.id)
    .map((e) => {
      const p = graph.nodes.find((n) => n.id === e.parent);
      return { name: p?.name ?? "", type: p?.type ?? "", role: e.name };
    });
}

/**
 * The guest device above `node` and how it is attached, or why the copy-before-write graph cannot
 * be built there (then the cut-off falls back to blockdev-backup sync=none, which is not
 * guest-safe: the reason is logged with every cut-off).
 */
export async function guestAttachment(qmp: QmpClient, node: string): Promise<Attachment | undefined> {
  const blocks = await qmp.execute<Array<{ qdev?: string; inserted?: { "node-name"?: string } }>>("query-block");
  const devices = new Set(blocks.flatMap((b) => (b.qdev ? [b.qdev] : [])));
  const direct = blocks.find((b) => b.qdev && b.inserted?.["node-name"] === node);
  if (direct?.qdev) return { device: { qdev: direct.qdev }, qdev: direct.qdev };
  if (devices.size === 0) return undefined; // qemu-storage-daemon: no guest devices at all
  const graph = await blockGraph(qmp);
  if (!graph) return undefined;
  const parents = parentsOf(graph, node);
  const parent = parents[0];
  if (!parent || parents.length !== 1 || parent.type !== "block-driver" || parent.role !== "file") return undefined;
  // Up through the filters to a device: anything else (an export, a job, a second user) stays sync=none.
  let top = parent.name;
  for (let depth = 0; depth < 8; depth++) {
    const up = parentsOf(graph, top);
    const only = up[0];
    if (!only || up.length !== 1 || only.name.startsWith(PREFIX)) return undefined;
    if (only.type === "block-backend") {
      if (!devices.has(only.name)) return undefined;
      return withFilter(qmp, only.name, parent.name);
    }
    if (only.role !== "file") return undefined;
    top = only.name;
  }
  return undefined;
}

async function withFilter(qmp: QmpClient, qdev: string, filterNode: string): Promise<Attachment> {
  const named = await qmp.execute<NamedNode[]>("query-named-block-nodes", { flat: true });
  const filter = named.find((n) => n["node-name"] === filterNode);
  if (filter?.drv !== "throttle") {
    return {
      qdev,
      fallback: `the disk node's parent is a ${filter?.drv ?? "unknown"} filter (${filterNode}); the copy-before-write filter is put only under a device or a throttle filter`,
    };
  }
  const throttleGroup = throttleGroupOf(filter.file);
  if (!throttleGroup) return { qdev, fallback: `the throttle group of filter ${filterNode} is not readable from QEMU (${filter.file})` };
  return { qdev, device: { qdev, filter: { node: filterNode, throttleGroup } } };
}

/** QEMU names a throttle node `json:{"throttle-group": "tg0", "driver": "throttle", "file": ...}`. */
export function throttleGroupOf(filename: string): string | undefined {
  if (!filename.startsWith("json:")) return undefined;
  try {
    const parsed = JSON.parse(filename.slice("json:".length)) as Record<string, unknown>;
    const group = parsed["throttle-group"];
    return typeof group === "string" && group !== "" ? group : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The device's iothread: "" when it has none, undefined when that cannot be told (the VM has
 * iothreads and the device no such property, e.g. a scsi-hd under a virtio-scsi controller). A
 * virtio-blk backend's device is its QOM parent; other devices carry the property or not at all.
 */
export async function deviceIothread(qmp: QmpClient, qdev: string): Promise<string | undefined> {
  const iothreads = await qmp.execute<unknown[]>("query-iothreads").catch(() => undefined);
  if (iothreads?.length === 0) return "";
  for (const path of [qdev, qdev.replace(/\/[^/]+$/, "")]) {
    try {
      const value = await qmp.execute<unknown>("qom-get", { path, property: "iothread" });
      if (typeof value === "string") return value;
    } catch {
      // No such property on this object: try its parent.
    }
  }
  return undefined;
}

/**
 * For a disk no device was found above (qemu-storage-daemon, or a graph this agent does not
 * follow): "" when QEMU has no iothread or no guest device at all, else undefined (cannot tell).
 */
export async function unattachedIothreads(qmp: QmpClient): Promise<string | undefined> {
  const iothreads = await qmp.execute<unknown[]>("query-iothreads").catch(() => undefined);
  if (iothreads?.length === 0) return "";
  const blocks = await qmp.execute<Array<{ qdev?: string }>>("query-block");
  return blocks.some((b) => b.qdev) ? undefined : "";
}
