#!/bin/sh
# Builds the default image (set to check in with a local rollout server), starts cairn-server
# with SQLite under out/demo-server on 127.0.0.1:8270, and boots the image in QEMU with its
# console on this terminal. Ctrl-C powers the VM off and stops the server.
# Extra arguments go to `cairn run` (e.g. --ssh-port 2222).
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -p cairn-cli --bin cairn -p cairn-server --bin cairn-server -p updatectl --bin updatectl
bin=./target/release
state=out/demo-server
mkdir -p "$state"

# A TUF repository of the demo's own: the image trusts its root; the server serves it and signs
# its timestamps with the timestamp key alone (the other keys stay in $state/keys).
[ -s "$state/feed/metadata/1.root.json" ] || "$bin/cairn" release init --feed "$state/feed" --keys "$state/keys"
mkdir -p "$state/online-keys" && cp -p "$state/keys"/timestamp-*.pk8 "$state/online-keys/"
"$bin/cairn" build --spec images/demo.toml --out out --trust-root "$state/feed/metadata/1.root.json"

[ -s "$state/token" ] || (umask 077 && "$bin/cairn-server" token create --data "$state" > "$state/token")
"$bin/cairn-server" serve --listen 127.0.0.1:8270 --data "$state" \
    --tuf-repo "$state/feed" --tuf-keys "$state/online-keys" > "$state/server.out" 2> "$state/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT INT TERM

# The VM enrolls with the default group's enrollment token, handed over in its cloud-config
# (root-only on the host, like every token).
until CAIRN_TOKEN=$(cat "$state/token") "$bin/updatectl" --server http://127.0.0.1:8270 group list >/dev/null 2>&1; do
    kill -0 $server || { cat "$state/server.log"; exit 1; }
    sleep 0.2
done
enroll=$(CAIRN_TOKEN=$(cat "$state/token") "$bin/updatectl" --server http://127.0.0.1:8270 group enrollment-token default)
(umask 077 && printf '#cloud-config\ncairn:\n  update:\n    enrollment_token: "%s"\n' "$enroll" > "$state/user-data")

cat <<MSG

cairn-server is running on http://127.0.0.1:8270 (log: $state/server.log); the VM's agent checks
in every 30 s. In another terminal:

    export CAIRN_SERVER=http://127.0.0.1:8270 CAIRN_TOKEN=\$(cat $state/token)
    $bin/updatectl instance list          # the VM, once it has checked in
    $bin/updatectl rollout status

To roll out an update: build version 2 trusting the same root, sign it into the repository the
server serves, point the channel at it:

    $bin/cairn build --spec images/demo.toml --out out/v2 --version 2 --trust-root $state/feed/metadata/1.root.json
    $bin/cairn release publish --feed $state/feed --keys $state/keys out/v2/release
    $bin/updatectl channel set-version stable 2

MSG
"$bin/cairn" run --image out/disk.qcow2 --snapshot --config "$state/user-data" "$@"
