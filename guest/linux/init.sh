#!/bin/sh
# PID 1 of the Linux test guest (see build-linux-guest.sh).
# The kernel gives init no PATH; qemu-ga's guest-exec and the shells below inherit this one.
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console failover net_failover virtio_net; do
  insmod /lib/modules/$m.ko || echo "QR-ERROR insmod $m"
done
# No udev: qemu-ga finds its port by name under /dev/virtio-ports.
mkdir -p /dev/virtio-ports
for i in 1 2 3 4 5 6 7 8 9 10; do
  [ -e /dev/vda ] && ls /sys/class/virtio-ports/*/name >/dev/null 2>&1 && break
  sleep 1
done
for p in /sys/class/virtio-ports/*; do
  ln -sf "/dev/${p##*/}" "/dev/virtio-ports/$(cat "$p/name")"
done
mount -t ext4 /dev/vda /data || echo "QR-ERROR mount /dev/vda"

# The application whose data the points must hold consistently: a counter replaced atomically.
n=$(cat /data/counter 2>/dev/null || echo 0)
(
  while :; do
    n=$((n + 1))
    echo "$n" > /data/counter.tmp && mv /data/counter.tmp /data/counter
    usleep 50000
  done
) &

# With a NIC (a drill's test VM has one): QEMU user networking's fixed guest address, and a
# service on port 80 for the drill's TCP check. virtio_net probes the device during insmod.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  mkdir -p /www && echo "qreplica test guest" > /www/index.html
  ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up && ip route add default via 10.0.2.2 || echo "QR-ERROR eth0"
  httpd -p 80 -h /www || echo "QR-ERROR httpd"
  echo "QR-NET eth0 10.0.2.15 httpd:80"
fi

/sbin/qemu-ga -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -t /run -f /run/qemu-ga.pid &

# A root shell for the tests on the second serial port: one command per line, then its status.
stty -F /dev/ttyS1 raw -echo
(
  while read -r line; do
    eval "$line"
    echo "QR-DONE $?"
  done
) < /dev/ttyS1 > /dev/ttyS1 2>&1 &

echo "QR-READY counter=$n"
while :; do sleep 3600; done
