# The e2e tier's guest script (sourced by init.sh): every test binary in /tests/e2e, one after
# the other, between the marker lines outcome.rs reads (begin; exit code and seconds taken).
export SSHLB_REQUIRE_ROOT_TESTS=1 RUST_BACKTRACE=1 SSHLB_AGENT=/usr/local/bin/sshlb-agent
# Under software emulation the kit's waits are stretched (tests/src/lib.rs: slowdown).
export SSHLB_TEST_SLOWDOWN=${sshlb_slowdown:-1}
for t in /tests/e2e/*; do
    name=${t##*/}
    echo "SSHLB-VM e2e-begin $name"
    start=$(date +%s)
    "$t" --test-threads=1 2>&1
    code=$?
    echo "SSHLB-VM e2e-exit $name $code $(($(date +%s) - start))"
done
