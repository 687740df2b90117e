/**
 * Names of everything qreplica creates inside QEMU. A fixed prefix lets a restarted agent find
 * (and clean up) what an earlier run left behind, and leave foreign bitmaps alone.
 */
export const PREFIX = "qreplica";

export const bitmapName = (seq: number): string => `${PREFIX}-${seq}`;

export function parseBitmapSeq(name: string): number | undefined {
  const m = /^qreplica-(\d+)$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

export const fleeceNodeName = (diskId: string): string => `${PREFIX}-fleece-${diskId}`;
export const backupJobId = (diskId: string): string => `${PREFIX}-job-${diskId}`;
export const exportId = (diskId: string): string => `${PREFIX}-exp-${diskId}`;
export const exportName = (diskId: string, seq: number): string => `${PREFIX}-${diskId}-${seq}`;

export const isOurFleeceNode = (node: string): boolean => node.startsWith(`${PREFIX}-fleece-`);
export const isOurJob = (id: string): boolean => id.startsWith(`${PREFIX}-job-`);
export const isOurExport = (id: string): boolean => id.startsWith(`${PREFIX}-exp-`);

export const dirtyBitmapContext = (bitmap: string): string => `qemu:dirty-bitmap:${bitmap}`;
export const BASE_ALLOCATION = "base:allocation";
