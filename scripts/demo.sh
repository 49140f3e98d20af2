#!/usr/bin/env bash
# Runs a real pod on a fresh Debian 12 machine, as root: installs prerequisites,
# builds rkt (static) and an example busybox image, then walks through
# fetch -> run -> list -> status -> gc.
set -euo pipefail
# Root is needed (apt, namespaces, mounts); a user with sudo gets it asked for.
if [ "$(id -u)" -ne 0 ]; then exec sudo -- "$0" "$@"; fi
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -q -p rkt -p rkt-conformance
bin=target/x86_64-unknown-linux-gnu/release
rkt() { echo "+ rkt $*" >&2; "$bin/rkt" "$@"; }

"$bin/rkt-conformance" build-image --out busybox.aci
rkt fetch --insecure-options=image ./busybox.aci
set +e
rkt run --insecure-options=image --stage1=fly ./busybox.aci --exec /bin/sh -- -c 'echo hi; exit 7'
echo "exit code: $?"
set -e
rkt list
uuid=$("$bin/rkt" list --full --no-legend | tail -n1 | cut -f1 | tr -d ' ')
rkt status "$uuid"
rkt gc --grace-period=0s
rkt list
