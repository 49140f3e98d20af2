#!/usr/bin/env bash
# Rewrites cli/link/hot-functions.txt, the order in which the release `rkt` is
# linked (see cli/build.rs): the functions a fly run executes first, then an
# nspawn run (stage0 and the init in the container), list, status and gc.
# Run as root after changing code on those paths, then commit the file; the
# peak-RSS benchmark shows when it has gone stale.
set -euo pipefail
cd "$(dirname "$0")/.."
# Symbols kept, names unchanged (cli/build.rs strips at link time otherwise).
RKT_KEEP_SYMBOLS=1 cargo build --release -q -p rkt -p rkt-benches -p rkt-conformance
bin=target/x86_64-unknown-linux-gnu/release
work=$(mktemp -d /var/tmp/rkt-hot-functions.XXXXXX)
cleanup() {
    "$bin/rkt" --dir "$work/data" gc --grace-period=0s >/dev/null 2>&1 || true
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
rkt() { "$bin/rkt" --dir "$work/data" "$@"; }

"$bin/rkt-conformance" build-image --out "$work/busybox.aci"
rkt fetch --insecure-options=image "$work/busybox.aci" >/dev/null
image=$(rkt image list --no-legend --full | awk 'NR == 1 { print $1 }')
# Warm runs first: the traced ones should see a rendered tree, as benchmarks do.
rkt run --stage1=fly "$image" --exec /bin/true
rkt run --stage1=nspawn --net=host "$image" --exec /bin/true

order=cli/link/hot-functions.txt
trace() { "$bin/rkt-hot-functions" --binary "$bin/rkt" --out "$order" "$@"; }
trace -- "$bin/rkt" --dir "$work/data" run --stage1=fly "$image" --exec /bin/true
trace --append -- "$bin/rkt" --dir "$work/data" run --stage1=nspawn --net=host "$image" --exec /bin/true
trace --append -- "$bin/rkt" --dir "$work/data" list >/dev/null
uuid=$(rkt list --no-legend --full | awk 'NR == 1 { print $1 }')
trace --append -- "$bin/rkt" --dir "$work/data" status "$uuid" >/dev/null
trace --append -- "$bin/rkt" --dir "$work/data" gc --grace-period=0s >/dev/null
# Relink the shipped (stripped) binary in the new order.
cargo build --release -q -p rkt
wc -l "$order"
