#!/bin/bash
# Sets everything up and runs the whole test suite: lint, unit and end-to-end tests with
# real clients (qemu-img, nbdinfo, fio, nbdfuse), then the virtual rig stage.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
