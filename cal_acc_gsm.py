"""Score decoded outputs: `python cal_acc_gsm.py [--generated_output_path DIR --steps 4 8 16]`.

Reads our result files and the official dot-sedd `step_<K>.jsonl` files; with no arguments
it scores the most recent evaluation output under exp_local/ or generated_output/.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dot.report.score_files import files_to_score, natural_key, report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--generated_output_path", type=Path, help="folder of .jsonl outputs")
    p.add_argument("--steps", type=int, nargs="+", help="score step_<K>.jsonl / *T<K>*.jsonl")
    p.add_argument("files", nargs="*", type=Path, help="result files to score")
    args = p.parse_args(argv)
    try:
        paths = sorted(args.files, key=natural_key) or files_to_score(args.generated_output_path,
                                                                     args.steps)
        print(report(paths))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
