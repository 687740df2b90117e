#!/usr/bin/env bash
# Builds the Linux test guest: Debian's cloud kernel and an initramfs holding busybox, qemu-ga (the
# host's own, with its libraries) and the virtio modules. It boots under TCG in a few seconds,
# mounts its ext4 data disk (vda), runs qemu-ga on the virtio-serial port, keeps writing a counter
# file, offers a root shell on its second serial port for the tests and, when it has a virtio NIC,
# takes QEMU user networking's address and serves HTTP on port 80. Used only by the tests of
# application-consistent points and of drills' checks; nothing here is shipped.
#
# Usage: build-linux-guest.sh OUTDIR   (writes OUTDIR/vmlinuz, OUTDIR/initrd.cpio, OUTDIR/KERNEL)
# Needs: apt-get (Debian lists; `apt-get update` when they are missing), dpkg-deb, qemu-ga.
set -euo pipefail
out=${1:?usage: build-linux-guest.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

qga=$(command -v qemu-ga || echo /usr/sbin/qemu-ga)
[ -x "$qga" ] || { echo "build-linux-guest: qemu-ga not found (Debian: apt-get install -y qemu-guest-agent)" >&2; exit 1; }

# The metapackage names the current ABI's image package (it changes with every kernel update).
resolve_kernel() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1; }
kernel_pkg=$(resolve_kernel)
if [ -z "$kernel_pkg" ]; then
  apt-get update -qq
  kernel_pkg=$(resolve_kernel)
fi
[ -n "$kernel_pkg" ] || { echo "build-linux-guest: apt-cache does not know linux-image-cloud-amd64 (are Debian's package lists reachable?)" >&2; exit 1; }

# apt-get download drops privileges to _apt, which cannot write into a root-only directory.
(cd "$work" && chmod 777 . && apt-get download -qq "$kernel_pkg" busybox-static 2>/dev/null) || {
  echo "build-linux-guest: apt-get download $kernel_pkg busybox-static failed" >&2
  exit 1
}
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox"
modules=$(ls -d "$work"/kernel/lib/modules/*)

root="$work/root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,data,lib/modules,etc}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
for applet in sh mount umount mkdir ln cat echo sleep insmod kill pidof ls sync mv rm seq date usleep poweroff reboot halt stty ip httpd; do
  ln -sf busybox "$root/bin/$applet"
done
# qemu-ga and exactly the libraries it loads, at the paths the loader expects.
cp "$qga" "$root/sbin/qemu-ga"
for lib in $(ldd "$qga" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# Load order follows the modules' own `depends=` (no depmod in an extracted package). The cloud
# kernel builds no NIC driver in: virtio_net (with its failover dependencies) is a module.
for m in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci_modern_dev drivers/virtio/virtio_pci \
  drivers/block/virtio_blk drivers/char/virtio_console net/core/failover drivers/net/net_failover drivers/net/virtio_net; do
  cp "$modules/kernel/$m.ko" "$root/lib/modules/"
done
install -m 0755 "$here/init.sh" "$root/init"

(cd "$root" && find . | sort | "$work/busybox/bin/busybox" cpio -o -H newc 2>/dev/null) > "$work/initrd.cpio"
cp "$work"/kernel/boot/vmlinuz-* "$work/vmlinuz"
mv "$work/initrd.cpio" "$out/initrd.cpio"
mv "$work/vmlinuz" "$out/vmlinuz"
echo "$kernel_pkg" > "$out/KERNEL"
echo "build-linux-guest: $out (kernel $kernel_pkg)"
