#!/bin/sh
# Runs everything CI runs: formatting, lints, unit tests, image checks and VM tests.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Free space, printed at the start and the end: a run that fails with ENOSPC shows why.
free_space() { echo "== disk: $(df -Ph . | awk 'NR == 2 { print $4 }') free where the clone is, $(df -Ph /tmp | awk 'NR == 2 { print $4 }') in /tmp"; }
free_space
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The binaries tests run as processes (cairn-server, updatectl), with the workspace's features:
# built here, tests find them fresh and need no `cargo build -p` of their own.
cargo build --workspace --bins --locked
cargo test --workspace --locked --exclude cairn-tests
cargo test -p cairn-tests --locked --lib --bins --examples
# cairn-tests' integration tests, most of which boot a VM under TCG (one vCPU, one core), in
# two lanes: each lane runs one test binary at a time, the longest first.
./scripts/lanes.sh 2 update vm image azure oci containers buses host cloud_config docker formats time network
# Every benchmark once in a quick mode (small inputs, one iteration): one that breaks fails CI.
# Their figures are not of record; full runs are manual (README).
for bench in "cairn-bench-config --runs 1" "cairn-bench-server --seconds 1 --instances 2000" \
    "cairn-bench-apply --runs 1 --no-vm" "cairn-bench --quick" "cairn-bench-rolling --quick" \
    "cairn-bench-delta --quick"; do
    echo "== $bench (quick)"
    # shellcheck disable=SC2086
    set -- $bench
    name=$1
    shift
    cargo run --quiet --locked -p cairn-tests --bin "$name" -- "$@"
done
free_space
