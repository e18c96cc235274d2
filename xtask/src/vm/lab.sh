# `cargo xtask run --vm`'s guest script (sourced by init.sh): the lab in the background, then —
# once it printed its commands — a shell on the console. Leaving the shell (exit, Ctrl-D) or the
# lab's --duration running out takes the lab down and powers the guest off.
export SSHLB_AGENT=/usr/local/bin/sshlb-agent SSHLB_TEST_SLOWDOWN=${sshlb_slowdown:-1}
sshlb-lab run $sshlb_duration 2>&1 &
lab=$!
while kill -0 "$lab" 2>/dev/null && [ ! -e /run/sshlb-lab/ready ]; do sleep 1; done
if [ -e /run/sshlb-lab/ready ]; then
    echo "SSHLB-VM lab-ready"
    if [ -n "$sshlb_duration" ]; then
        wait "$lab"
    else
        echo "A shell in the guest (the lab's commands above work here). exit or Ctrl-D powers the"
        echo "guest off; Ctrl-C on the host ends QEMU at once."
        # Debian's static busybox runs its own applets before PATH: the shell's `ip` and
        # `nsenter` must be the real ones, which the lab's commands need.
        printf 'ip() { /sbin/ip "$@"; }\nnsenter() { /sbin/nsenter "$@"; }\n' > /etc/profile
        setsid cttyhack sh -l
        kill -TERM "$lab" 2>/dev/null
        wait "$lab"
    fi
else
    wait "$lab"
    echo "SSHLB-VM lab-failed $?"
fi
