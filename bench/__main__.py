"""python -m bench [ROW ...] [--quick] [--work DIR] [--markdown FILE]: run the benchmarks, print the table.

Rows: detection, idle, inspection, hashing, upload, burst, artifact, history, vm-build (default: all,
in that order). --quick uses small sizes and fewer repetitions (for development, not for the doc).
Large files go under --work (default /var/tmp/esxi-watcher-bench), removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import traceback
from pathlib import Path

from bench.common import Figure, load, machine
from bench.rows import ROWS, Context


def table(figures: list[Figure]) -> str:
    lines = ["| figure | measured | ours | baseline (same run) | ratio | goal | met |",
             "|---|---|---|---|---|---|---|"]
    for figure in figures:
        lines.append(f"| {figure.row} | {figure.what} | {figure.ours} | {figure.baseline} | {figure.ratio} | "
                     f"{figure.goal} | {figure.verdict()} |")
    notes = [f"- {figure.row}: {note}" for figure in figures for note in figure.notes]
    return "\n".join(lines + ([""] + notes if notes else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="*", choices=[[], *ROWS], metavar="ROW", help=", ".join(ROWS))
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/esxi-watcher-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--markdown", type=Path, help="also write the table and the machine to this file")
    arguments = parser.parse_args(argv)
    rows = arguments.rows or list(ROWS)
    work = arguments.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    description = machine()
    print("machine: " + ", ".join(f"{key} {value}" for key, value in description.items()), flush=True)
    figures: list[Figure] = []
    loads = []
    started = time.monotonic()
    try:
        for name in rows:
            row_started = time.monotonic()
            try:
                found = ROWS[name](Context(work, arguments.quick))
            except Exception as error:  # one broken row must not hide the others
                traceback.print_exc()
                found = [Figure(name, "failed to run", f"{type(error).__name__}: {error}", met=False)]
            loads.append(f"{name} {load()}")
            for figure in found:
                print(f"[{time.monotonic() - row_started:5.1f} s, load {load()}] {figure.row}: {figure.what}: "
                      f"{figure.ours} | {figure.baseline} | {figure.ratio} | {figure.verdict()}", flush=True)
            figures += found
    finally:
        if not arguments.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    print()
    print(table(figures))
    summary = (f"{sum(f.met is True for f in figures)} of {sum(f.met is not None for f in figures)} goals met "
               f"in {elapsed / 60:.1f} min")
    print(f"\n{summary}; load after each row: {'; '.join(loads)}")
    if arguments.markdown:
        machine_line = ", ".join(f"{key}: {value}" for key, value in description.items())
        arguments.markdown.write_text(f"machine: {machine_line}\n\n{table(figures)}\n\n{summary}\n\n"
                                      f"load (1, 5, 15 min) after each row: {'; '.join(loads)}\n")
    return 0 if all(f.met is not False for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
