/** virsh is shared with the site's libvirt launcher: it lives in the neutral qemu layer. */
export { LibvirtCommandError, Virsh, xmlEscape } from "../../../src/qemu/libvirt/virsh.js";
