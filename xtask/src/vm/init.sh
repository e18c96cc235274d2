#!/bin/busybox sh
# The vm-test guest's /init (embedded by boot.rs, run by the kernel as rdinit=/init).
# It mounts what the tests need, loads the modules boot.rs put in /lib/modules (named in load
# order), runs both test binaries and prints the SSHLB-VM marker lines outcome.rs reads the
# verdict from; then it powers off, which ends QEMU.
/bin/busybox --install -s /bin
export PATH=/sbin:/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /run/netns /var
ln -s /run /var/run
for m in /lib/modules/*.ko; do insmod "$m"; done
ip link set lo up
echo "SSHLB-VM release $(uname -r)"
cd /tmp
SSHLB_REQUIRE_ROOT_TESTS=1 SSHLB_FIXTURES_ALLOW_OLD_KERNEL=1 RUST_BACKTRACE=0 /tests/fixtures --test-threads=1 2>&1
echo "SSHLB-VM fixtures-exit $?"
SSHLB_REQUIRE_ROOT_TESTS=1 RUST_BACKTRACE=0 /tests/namespace --test-threads=1 2>&1
echo "SSHLB-VM namespace-exit $?"
echo "SSHLB-VM done"
poweroff -f
