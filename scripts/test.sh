#!/usr/bin/env bash
# The test command: sets up prerequisites, then runs every test in the workspace.
# Integration tests run real pods and need root; without it they report "skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo test --workspace "$@"
