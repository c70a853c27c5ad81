#!/bin/sh
# Runs everything CI runs: formatting, lints, unit tests, image checks and VM tests.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The binaries tests run as processes (cairn-server, updatectl), with the workspace's features:
# built here, tests find them fresh and need no `cargo build -p` of their own.
cargo build --workspace --bins --locked
cargo test --workspace --locked
