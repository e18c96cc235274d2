#!/bin/busybox sh
# Every vm guest's /init (embedded by image.rs, run by the kernel as rdinit=/init).
# It mounts what the tests need, loads the modules image.rs put in /lib/modules (named in load
# order), prints the release marker outcome.rs reads, runs the payload's /guest.sh (matrix.sh,
# e2e.sh or lab.sh) and powers off, which ends QEMU.
/bin/busybox --install -s /bin
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /var /dev/pts
mount -t devpts devpts /dev/pts
ln -s /run /var/run
for m in /lib/modules/*.ko; do insmod "$m"; done
ip link set lo up
echo "SSHLB-VM release $(uname -r)"
cd /tmp
. /guest.sh
echo "SSHLB-VM done"
poweroff -f
