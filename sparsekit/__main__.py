"""Command line: `python -m sparsekit info` and `python -m sparsekit bench ...` (also the `sparsekit` script)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="sparsekit", description=__doc__)
    sub = parser.add_subparsers(dest="cmd")
    sub.add_parser("info", help="versions, build (CUDA archs, cuSPARSELt), devices, live backends")
    bench = sub.add_parser("bench", help="latency of sparse formats against dense (default: the built-in model demo)")
    from .bench.cli import add_arguments

    add_arguments(bench)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.cmd == "info":
        import sparsekit
        from sparsekit._info import format_info

        print(format_info(sparsekit.info()))
        return 0
    if args.cmd == "bench":
        from .bench.cli import run

        return run(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
