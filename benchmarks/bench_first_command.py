"""Benchmark of the README's first command: install time and size, run time, and the demo's figures.

    python benchmarks/bench_first_command.py [--runs 3] [--install] [--out FILE]

With ``--install``: a fresh copy of this checkout (the files git tracks or would track) and a brand-new venv
holding only pip, in which the README's first line runs exactly as written; the install's time (with this
machine's pip cache, whatever it holds: the JSON says so) and the venv's size are recorded. Then the pipeline part
of that line (``python pipeline.py run --local``) runs ``--runs`` times in that copy, each into a new output
folder; every run's wall time and the figures of its ``summary.json`` are recorded, with medians.

Prints one JSON object (and writes it to --out). The core count and the load average before and after are part
of the output: the figures are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.readme import copy_checkout, setup_commands  # noqa: E402 - the README's own line, not a copy

FIGURES = ("verification_accuracy", "auc", "eer", "top1_accuracy", "top5_accuracy", "genuine_pairs",
           "impostor_pairs")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def shell(command: str, cwd: Path, venv: Path | None) -> float:
    env = dict(os.environ)
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(venv)
    started = time.monotonic()
    subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--install", action="store_true", help="time the install in a brand-new venv first")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    main_line = setup_commands()[0]
    install_part, run_part = (part.strip() for part in main_line.split("&&"))
    result: dict = {"benchmark": "first_command", "readme_line": main_line, "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="first-command-") as tmp:
        checkout = copy_checkout(Path(tmp) / "checkout")
        venv = None
        if args.install:
            venv = Path(tmp) / "venv"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            result["install"] = {"command": install_part, "seconds": round(shell(install_part, checkout, venv), 1),
                                 "venv_bytes": folder_bytes(venv),
                                 "note": "with this machine's pip cache as it was (downloads not timed)"}
        runs = []
        for i in range(args.runs):
            output = Path(tmp) / f"runs-{i}"
            seconds = shell(f"{run_part} --output {output}", checkout, venv)
            (run_dir,) = output.glob("arcface-training-*")
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append({"seconds": round(seconds, 1), "exported": bool(summary["exported"]),
                         **{key: summary["metrics"][key] for key in FIGURES}})
            print(json.dumps(runs[-1]), file=sys.stderr)
    result["runs"] = runs
    result["median"] = {key: statistics.median(run[key] for run in runs) for key in ("seconds", *FIGURES)}
    result["load_average_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
