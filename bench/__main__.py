"""``python -m bench [--quick] [--out DIR]``: run every benchmark figure, print the table.

Writes ``DIR/results.json`` and ``DIR/latency.png`` (default ``bench/results``).
Exit status 0 when the run completed (targets met or not), 1 when it failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a seconds-long smoke run")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results",
        help="output directory (default: bench/results)",
    )
    args = parser.parse_args(argv)

    from bench import harness, report

    t0 = time.monotonic()
    try:
        data = harness.run(args.out, quick=args.quick)
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    print()
    print(report.table(data))
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'latency.png'} ({time.monotonic() - t0:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
