import { z } from "zod";

/**
 * A VM managed by libvirt: the agent uses libvirt's checkpoints and pull-mode backups instead of a
 * QMP monitor of its own, and finds the disks in the domain's XML.
 */
export const LibvirtVmSchema = z
  .object({
    /** The domain's name (`virsh list --all`). */
    domain: z.string().min(1, "must name the libvirt domain (as virsh list --all shows it)"),
    /** libvirt connection URI: qemu:///system, or qemu+unix:///system?socket=PATH for a daemon's own socket. */
    uri: z
      .string()
      .regex(/^qemu(\+unix)?:\/\/\/(system|session)(\?.*)?$/, "must be a local QEMU URI such as qemu:///system or qemu+unix:///system?socket=/run/libvirt/libvirt-sock")
      .default("qemu:///system"),
  })
  .strict();

export type LibvirtVmConfig = z.infer<typeof LibvirtVmSchema>;

/** Parses a VM's `libvirt:` block; the error names each wrong key under `where` and what to write. */
export function parseLibvirtVm(v: unknown, where: string): { ok: true; value: LibvirtVmConfig } | { ok: false; message: string } {
  const r = LibvirtVmSchema.safeParse(v);
  if (r.success) return { ok: true, value: r.data };
  const message = r.error.issues.map((i) => `${[where, ...i.path.map(String)].join(".")}: ${i.message}`).join("; ");
  return { ok: false, message };
}
