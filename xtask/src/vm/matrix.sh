# The kernel matrix's guest script (sourced by init.sh): the BPF packet fixtures, then the
# namespace tests, each followed by the marker line outcome.rs reads. The frame fuzz runs a
# quarter of its million frames here (the host's suite runs them all): under software
# emulation 5.10's test runs manage ~5,000 frames a second, and a million took 200 s.
SSHLB_REQUIRE_ROOT_TESTS=1 SSHLB_FIXTURES_ALLOW_OLD_KERNEL=1 SSHLB_FRAME_FUZZ_FRAMES=250000 RUST_BACKTRACE=0 /tests/fixtures --test-threads=1 2>&1
echo "SSHLB-VM fixtures-exit $?"
SSHLB_REQUIRE_ROOT_TESTS=1 RUST_BACKTRACE=0 /tests/namespace --test-threads=1 2>&1
echo "SSHLB-VM namespace-exit $?"
