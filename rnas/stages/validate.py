"""``rnas validate-params PATH``: only the params check (exit 0 valid, 2 invalid)."""

from __future__ import annotations

import argparse
import sys

from rnas.config import ParamsError, load_params


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default="params.yaml", help="params file to check")


def run(args: argparse.Namespace) -> int:
    try:
        load_params(args.path)
    except ParamsError as err:
        print(f"invalid params: {err}", file=sys.stderr)
        return 2
    print(f"{args.path}: valid")
    return 0
