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

/** The copy-before-write graph of a qemu-system disk: scratch file <- filter (under the device) <- snapshot-access. */
export const scratchNodeName = (diskId: string): string => `${PREFIX}-scratch-${diskId}`;
export const cbwNodeName = (diskId: string): string => `${PREFIX}-cbw-${diskId}`;
export const accessNodeName = (diskId: string): string => `${PREFIX}-access-${diskId}`;

const NODE_KINDS = ["fleece", "scratch", "cbw", "access"] as const;
export const isOurFleeceNode = (node: string): boolean => NODE_KINDS.some((k) => node.startsWith(`${PREFIX}-${k}-`));
export const isOurCbwNode = (node: string): boolean => node.startsWith(`${PREFIX}-cbw-`);
export const diskIdOfCbwNode = (node: string): string | undefined => (isOurCbwNode(node) ? node.slice(`${PREFIX}-cbw-`.length) : undefined);
export const isOurJob = (id: string): boolean => id.startsWith(`${PREFIX}-job-`);
export const isOurExport = (id: string): boolean => id.startsWith(`${PREFIX}-exp-`);

export const dirtyBitmapContext = (bitmap: string): string => `qemu:dirty-bitmap:${bitmap}`;
export const BASE_ALLOCATION = "base:allocation";
