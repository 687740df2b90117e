/** A disk of a libvirt domain that libvirt can checkpoint (a qcow2 file or block device). */
export interface DomainDisk {
  /** libvirt's name of the disk: its target dev (vda, sda, hda). */
  target: string;
  /** The image the domain writes (source file or dev). */
  source: string;
  format: string;
}

const attr = (tag: string, name: string): string | undefined => new RegExp(`\\b${name}=(['"])(.*?)\\1`).exec(tag)?.[2];

/**
 * The domain's disks, from `virsh dumpxml`: each `<disk device='disk'>` with its target and
 * source (cdroms and floppies carry nothing to replicate). A tiny tag scanner is enough for the
 * XML libvirt itself writes; no XML dependency for it.
 */
export function domainDisks(xml: string): DomainDisk[] {
  const disks: DomainDisk[] = [];
  for (const m of xml.matchAll(/<disk\b([^>]*)>([\s\S]*?)<\/disk>/g)) {
    const open = m[1] ?? "";
    const body = m[2] ?? "";
    if ((attr(open, "device") ?? "disk") !== "disk") continue;
    // A backing chain's <backingStore> carries <source> too: only the top's counts.
    const top = body.replace(/<backingStore\b[\s\S]*?<\/backingStore>/g, "");
    const target = attr(/<target\b[^>]*>/.exec(top)?.[0] ?? "", "dev");
    const sourceTag = /<source\b[^>]*>/.exec(top)?.[0] ?? "";
    const source = attr(sourceTag, "file") ?? attr(sourceTag, "dev");
    const format = attr(/<driver\b[^>]*>/.exec(top)?.[0] ?? "", "type") ?? "raw";
    if (target && source) disks.push({ target, source, format });
  }
  return disks;
}

/** The `<name>` of a checkpoint or domain document. */
export function xmlName(xml: string): string | undefined {
  return /<name>([^<]*)<\/name>/.exec(xml)?.[1];
}
