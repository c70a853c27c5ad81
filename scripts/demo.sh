#!/bin/sh
# Builds the default image and boots it in QEMU with its console on this terminal.
# Ctrl-C powers the VM off. Extra arguments go to `cairn run` (e.g. --ssh-port 2222).
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p cairn-image --bin cairn
./target/release/cairn build --spec images/default.toml --out out
exec ./target/release/cairn run --image out/disk.qcow2 --snapshot "$@"
