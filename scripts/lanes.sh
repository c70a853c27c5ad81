#!/bin/sh
# Runs cairn-tests' integration test binaries in LANES parallel lanes, each lane taking the next
# binary not yet taken: those named (longest first), then the rest. Each binary's output goes
# to a log of its own, printed when it ends; any failure fails the whole run, after every lane
# has finished.
#   lanes.sh LANES [NAME...]
set -eu
cd "$(dirname "$0")/.."
lanes=$1
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Build every integration test binary and list them (name and path), in the order given.
cargo test -p cairn-tests --locked --tests --no-run --message-format=json-render-diagnostics > "$work/built"
grep '"kind":\["test"\]' "$work/built" \
    | sed -n 's/.*"name":"\([^"]*\)".*"executable":"\([^"]*\)".*/\1 \2/p' > "$work/all"
[ -s "$work/all" ] || { echo "lanes.sh: no test binaries found" >&2; exit 1; }
for name in "$@"; do
    grep "^$name " "$work/all" || { echo "lanes.sh: no test binary $name" >&2; exit 1; }
done > "$work/order"
grep -v -x -F -f "$work/order" "$work/all" >> "$work/order" || true

lane() {
    while read -r name path; do
        # mkdir is atomic: the lane that makes the directory runs the binary.
        mkdir "$work/$name.taken" 2>/dev/null || continue
        start=$(date +%s)
        if (cd tests && CARGO_MANIFEST_DIR="$PWD" "$path") < /dev/null > "$work/$name.log" 2>&1; then
            result=ok
        else
            result=FAILED
            echo "$name" >> "$work/failed"
        fi
        # One lane prints at a time: a log is never interleaved with another.
        flock "$work/print" sh -c 'echo "$1"; cat "$2"' - \
            "== lane $1: tests/$name.rs $result in $(($(date +%s) - start)) s" "$work/$name.log"
    done < "$work/order"
}

i=1
while [ "$i" -le "$lanes" ]; do
    lane "$i" &
    i=$((i + 1))
done
wait
if [ -e "$work/failed" ]; then
    echo "lanes.sh: FAILED: $(tr '\n' ' ' < "$work/failed")(their output is above)" >&2
    exit 1
fi
