"""Coverage-guided fuzzing of the parsers that face the outside, with atheris (libFuzzer).

Usage::

    .venv/bin/python -m tools.fuzz nbd --runs 1000000
    .venv/bin/python -m tools.fuzz all --runs 100000 --save
    .venv/bin/python -m tools.fuzz record --seconds 120

Targets are in :mod:`tools.fuzz_targets` (``nbd``, ``console``, ``record``, ``link``,
``peer``).
Each runs in a child process (libFuzzer exits the process when it is done) that
instruments ``firmware`` and ``hal`` for coverage. The kept corpus is
``tests/fuzz/corpus/<target>/``: it seeds every run; what a run finds goes to a
scratch directory and, with ``--save``, is merged back (only inputs that add
coverage). An input that crashes, hangs (``--timeout``) or breaks a property is
written to ``tests/fuzz/crashes/<target>/``, which ``tests/fuzz`` replays for ever
after as a regression input. Prints, per target, the inputs tried and the crashes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUZZ_DIR = REPO / "tests" / "fuzz"
CORPUS = FUZZ_DIR / "corpus"
CRASHES = FUZZ_DIR / "crashes"
TARGET_NAMES = ("nbd", "console", "record", "link", "peer")
# Modules to instrument for coverage, imported before the targets are.
_INSTRUMENTED = ("firmware", "hal")
_MODULES = ("firmware.frontends.nbd.protocol", "firmware.console.grammar",
            "firmware.console.commands", "firmware.record.layout", "firmware.record.store",
            "hal.media.remote.frames", "hal.wire", "firmware.peer.framing",
            "firmware.peer.frames", "firmware.peer.held", "firmware.peer.config",
            "firmware.peer.core")


def write_seeds() -> int:
    """Put the hand-made seeds into the kept corpus (content-addressed, like libFuzzer)."""
    from tools.fuzz_targets import seeds

    added = 0
    for target, inputs in seeds().items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            path = directory / hashlib.sha1(data).hexdigest()
            if not path.exists():
                path.write_bytes(data)
                added += 1
    return added


def _child(target: str, libfuzzer_args: list[str]) -> None:
    import importlib

    import atheris

    with atheris.instrument_imports(include=list(_INSTRUMENTED)):
        for name in _MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    from tools.fuzz_targets import TARGETS

    atheris.Setup([_launcher(target), *libfuzzer_args], TARGETS[target])
    atheris.Fuzz()


def _launcher(target: str) -> str:
    """An executable that starts this child again: libFuzzer's merge re-runs argv[0]."""
    path = Path(tempfile.gettempdir()) / f"tandem-fuzz-{target}-{os.getuid()}.sh"
    script = (f"#!/bin/sh\ncd {REPO}\n"
              f"exec {sys.executable} -m tools.fuzz --child {target} \"$@\"\n")
    if not path.exists() or path.read_text() != script:
        path.write_text(script)
        path.chmod(0o755)
    return str(path)


def run_target(target: str, *, runs: int | None, seconds: int | None, max_len: int,
               timeout: int, save: bool, seed: int | None, quiet: bool) -> dict[str, object]:
    kept = CORPUS / target
    kept.mkdir(parents=True, exist_ok=True)
    crash_dir = CRASHES / target
    crash_dir.mkdir(parents=True, exist_ok=True)
    crashes_before = set(os.listdir(crash_dir))
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as scratch:
        args = [scratch, str(kept), f"-max_len={max_len}", f"-timeout={timeout}",
                "-print_final_stats=1", f"-artifact_prefix={crash_dir}/", "-rss_limit_mb=2048"]
        if runs is not None:
            args.append(f"-runs={runs}")
        if seconds is not None:
            args.append(f"-max_total_time={seconds}")
        if seed is not None:
            args.append(f"-seed={seed}")
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "tools.fuzz", "--child", target, *args],
                              cwd=REPO, capture_output=True, text=True, errors="replace")
        elapsed = time.monotonic() - started
        output = proc.stdout + proc.stderr
        executed = _stat(output, "number_of_executed_units")
        if executed is None:
            done = re.findall(r"Done (\d+) runs", output)
            executed = int(done[-1]) if done else None
        found = len(os.listdir(scratch))
        merged = 0
        if save and found:
            before = len(os.listdir(kept))
            subprocess.run([sys.executable, "-m", "tools.fuzz", "--child", target,
                            "-merge=1", f"-max_len={max_len}", str(kept), scratch],
                           cwd=REPO, capture_output=True, text=True)
            merged = len(os.listdir(kept)) - before
    new_crashes = sorted(set(os.listdir(crash_dir)) - crashes_before)
    result: dict[str, object] = {
        "target": target, "inputs": executed, "seconds": round(elapsed, 1),
        "crashes": len(new_crashes), "crash_files": [str(crash_dir / c) for c in new_crashes],
        "corpus": len(os.listdir(kept)), "new_interesting": found, "saved": merged,
        "exit_status": proc.returncode,
    }
    if (proc.returncode != 0 or new_crashes) and not quiet:
        tail = "\n".join(output.splitlines()[-40:])
        print(f"--- {target}: libFuzzer output (last lines) ---\n{tail}", file=sys.stderr)
    return result


def _stat(output: str, name: str) -> int | None:
    match = re.search(rf"stat::{name}:\s+(\d+)", output)
    return int(match.group(1)) if match else None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("targets", nargs="*", default=["all"],
                        help=f"targets: {', '.join(TARGET_NAMES)} or all (default)")
    parser.add_argument("--runs", type=int, help="inputs per target (default 100000)")
    parser.add_argument("--seconds", type=int, help="time limit per target")
    parser.add_argument("--max-len", type=int, default=4096, help="longest input (bytes)")
    parser.add_argument("--timeout", type=int, default=10,
                        help="seconds one input may take before it counts as a hang")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed")
    parser.add_argument("--save", action="store_true",
                        help="merge inputs that add coverage into tests/fuzz/corpus")
    parser.add_argument("--write-seeds", action="store_true",
                        help="(re)write the hand-made seeds into the corpus, then run")


def register(subparsers: argparse._SubParsersAction) -> None:
    """`tandem fuzz ...` (if the CLI lists this module)."""
    p = subparsers.add_parser("fuzz", help="coverage-guided fuzzing of the parsers (atheris)")
    _add_arguments(p)
    p.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m tools.fuzz",
                                     description=__doc__.split("\n")[0])
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    targets = list(TARGET_NAMES) if "all" in args.targets else args.targets
    unknown = set(targets) - set(TARGET_NAMES)
    if unknown:
        print(f"tools.fuzz: unknown targets {sorted(unknown)}; known: "
              f"{', '.join(TARGET_NAMES)}", file=sys.stderr)
        return 2
    try:
        import atheris  # noqa: F401
    except ImportError:
        print("tools.fuzz: atheris is not installed (.venv/bin/pip install atheris)",
              file=sys.stderr)
        return 2
    if args.write_seeds:
        write_seeds()
    runs = args.runs if args.runs is not None or args.seconds is not None else 100_000
    failed = False
    for target in targets:
        r = run_target(target, runs=runs, seconds=args.seconds, max_len=args.max_len,
                       timeout=args.timeout, save=args.save, seed=args.seed, quiet=False)
        inputs = r["inputs"]
        rate = f"{int(inputs) / max(float(r['seconds']), 0.1):.0f}/s" if inputs else "?"
        print(f"fuzz {target:8s} inputs tried {inputs if inputs is not None else '?':>9} "
              f"in {r['seconds']:>7} s ({rate}) · crashes {r['crashes']} · corpus "
              f"{r['corpus']} (+{r['saved']} saved of {r['new_interesting']} new)", flush=True)
        for path in r["crash_files"]:  # type: ignore[union-attr]
            print(f"  crash input: {path}")
        if r["crashes"] or r["exit_status"] != 0 or inputs is None:
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
