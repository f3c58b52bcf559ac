"""`python -m dot.data fetch gsm8k` / `python -m dot.data make-mult --digits 4x4 --n 100000`."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dot.data import DATA_ROOT, generated_lines
from dot.data.fetch import FILES, DownloadError, fetch
from dot.results import write_text_atomic
from dot.tasks import Multiplication, get_task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dot.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download a task's upstream files (sha256 verified)")
    f.add_argument("task", help=f"one of {sorted(FILES)} (4x4 and 5x5 accepted)")
    f.add_argument("--splits", nargs="+", default=["train", "valid", "test"])
    f.add_argument("--root", type=Path, default=DATA_ROOT, help="writes ROOT/<task>/<split>.txt")
    f.add_argument("--mirror", default=os.environ.get("DOT_DATA_MIRROR"),
                   help="base address holding the repository's data/ tree (default: GitHub)")
    m = sub.add_parser("make-mult", help="write a generated multiplication split")
    m.add_argument("--digits", required=True, help="operand sizes, e.g. 4x4 or 3x2")
    m.add_argument("--n", type=int, default=100_000, help="training lines")
    m.add_argument("--split", default="train", choices=["train", "valid", "test"])
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--root", type=Path, default=DATA_ROOT)
    m.add_argument("--out", type=Path, help="default ROOT/<task>/<split>.txt")
    args = parser.parse_args(argv)

    if args.command == "fetch":
        try:
            task = get_task(args.task)
            for path in fetch(task.data_dir, args.root, tuple(args.splits), args.mirror):
                print(f"ok {path}")
        except (DownloadError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0

    if args.n < 1:
        parser.error(f"--n must be >= 1 (training lines), got {args.n}")
    try:
        task = get_task(args.digits)
    except ValueError as err:
        parser.error(f"--digits {args.digits}: {err}")
    if not isinstance(task, Multiplication):
        parser.error(f"--digits {args.digits}: not a multiplication size")
    out = args.out or args.root / task.data_dir / f"{args.split}.txt"
    lines = generated_lines(task, args.split, args.n, args.seed, args.root)
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    print(f"wrote {len(lines)} lines to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
