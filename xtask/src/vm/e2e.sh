# The e2e tier's guest script (sourced by init.sh): every test binary in /tests/e2e, one after
# the other, between the marker lines outcome.rs reads (begin; exit code and seconds taken),
# their figures shown (--nocapture).
export SSHLB_REQUIRE_ROOT_TESTS=1 RUST_BACKTRACE=1 SSHLB_AGENT=/usr/local/bin/sshlb-agent
# Under software emulation the kit's waits are stretched (tests/src/lib.rs: slowdown).
export SSHLB_TEST_SLOWDOWN=${sshlb_slowdown:-1}
# Tests this kernel cannot run (guest.rs: e2e_skips), comma-separated on the kernel's command line.
skips=
for s in $(echo "$sshlb_skip" | tr , ' '); do skips="$skips --skip $s"; done
for t in /tests/e2e/*; do
    name=${t##*/}
    echo "SSHLB-VM e2e-begin $name"
    start=$(date +%s)
    # A hung binary ends after 30 minutes (exit 143) and the next one runs.
    timeout 1800 "$t" --test-threads=1 --nocapture $skips 2>&1
    code=$?
    echo "SSHLB-VM e2e-exit $name $code $(($(date +%s) - start))"
done
