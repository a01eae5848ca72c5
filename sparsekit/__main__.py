"""Command line: `python -m sparsekit info`, `python -m sparsekit bench ...` and
`python -m sparsekit compress MODEL_DIR --recipe R --calib TEXTFILE --out DIR` (also the `sparsekit` script)."""
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
    comp = sub.add_parser("compress", help="a Hugging Face model directory -> a smaller, faster sparsekit checkpoint "
                                           "(prune / int8, convert, report)")
    from .compress_cli import add_arguments as add_compress_arguments

    add_compress_arguments(comp)
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
    if args.cmd == "compress":
        from .compress_cli import run as run_compress

        return run_compress(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
