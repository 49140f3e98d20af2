#!/usr/bin/env bash
# The test command: sets up prerequisites, then runs every test in the workspace.
# Integration tests run real pods as root (an integration test run without root
# reports "skipped"; `cargo test` alone does that).
set -euo pipefail
# Root is needed (apt, namespaces, mounts); a user with sudo gets it asked for.
if [ "$(id -u)" -ne 0 ]; then exec sudo -- "$0" "$@"; fi
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --workspace "$@"
