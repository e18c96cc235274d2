# The kernel matrix's guest script (sourced by init.sh): the BPF packet fixtures, then the
# namespace tests, each followed by the marker line outcome.rs reads.
SSHLB_REQUIRE_ROOT_TESTS=1 SSHLB_FIXTURES_ALLOW_OLD_KERNEL=1 RUST_BACKTRACE=0 /tests/fixtures --test-threads=1 2>&1
echo "SSHLB-VM fixtures-exit $?"
SSHLB_REQUIRE_ROOT_TESTS=1 RUST_BACKTRACE=0 /tests/namespace --test-threads=1 2>&1
echo "SSHLB-VM namespace-exit $?"
