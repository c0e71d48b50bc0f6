#!/bin/bash
# Sets everything up and runs the whole test suite: lint, the virtual rig (the real
# kernel's LIO/TCMU in QEMU, hil-tests/ inside it), then unit and end-to-end tests with
# real clients (qemu-img, nbdinfo, fio, nbdfuse, qemu-nbd, nbdkit).
# TANDEM_SKIP_RIG=1 skips the rig stage (it needs root and ~5-10 minutes).
# --quick: lint, types and the pure cores only (record, protocol machines, NVRAM
# drivers against chip models; no sockets, no clients, no VM): well under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy  # firmware/, hal/, board/: the files and settings are in pyproject.toml
if [ "${1:-}" = --quick ]; then
    shift
    exec .venv/bin/python -m pytest -q "$@" \
        tests/record tests/hal tests/fuzz/test_record_decoder.py \
        tests/nbd/test_nbd_protocol.py tests/tcmu/test_tcmu_ring.py tests/tcmu/test_tcmu_scsi.py \
        tests/console/test_console_grammar.py \
        tests/link/test_link_frames.py tests/link/test_link_machines.py tests/peer \
        tests/test_layers.py
fi
if [ "${TANDEM_SKIP_RIG:-0}" != 1 ]; then
    echo "test: virtual rig stage (hil-tests/ inside a QEMU VM running Debian's kernel)" >&2
    .venv/bin/tandem rig test --virtual
fi
.venv/bin/python -m pytest "$@"
