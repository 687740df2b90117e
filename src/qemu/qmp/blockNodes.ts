import type { QmpClient } from "./client.js";

export interface DirtyBitmapInfo {
  name?: string;
  count: number;
  granularity: number;
  recording: boolean;
  busy: boolean;
  persistent: boolean;
  inconsistent?: boolean;
}

export interface BlockNodeInfo {
  "node-name": string;
  drv: string;
  file: string;
  ro: boolean;
  image: { "virtual-size": number; format?: string; filename: string };
  "dirty-bitmaps"?: DirtyBitmapInfo[];
  backing_file?: string;
}

export interface BlockJobInfo {
  device: string;
  type: string;
  status?: string;
}

export interface BlockExportInfo {
  id: string;
  type: string;
  "node-name": string;
  "shutting-down": boolean;
}

export async function queryNamedBlockNodes(qmp: QmpClient): Promise<BlockNodeInfo[]> {
  return qmp.execute<BlockNodeInfo[]>("query-named-block-nodes", { flat: true });
}

export async function findBlockNode(qmp: QmpClient, nodeName: string): Promise<BlockNodeInfo | undefined> {
  return (await queryNamedBlockNodes(qmp)).find((n) => n["node-name"] === nodeName);
}

/** Named bitmaps only: backup jobs add anonymous internal ones that are not ours to touch. */
export function namedBitmaps(node: BlockNodeInfo): Array<DirtyBitmapInfo & { name: string }> {
  return (node["dirty-bitmaps"] ?? []).filter((b): b is DirtyBitmapInfo & { name: string } => typeof b.name === "string");
}

export async function queryBlockJobs(qmp: QmpClient): Promise<BlockJobInfo[]> {
  return qmp.execute<BlockJobInfo[]>("query-block-jobs");
}

export async function queryBlockExports(qmp: QmpClient): Promise<BlockExportInfo[]> {
  return qmp.execute<BlockExportInfo[]>("query-block-exports");
}
