"""``rnas params-schema``: print the JSON schema of params files (generated from rnas.config)."""

from __future__ import annotations

import argparse
import json

from rnas.config import json_schema


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="workflow/schemas/params.schema.json", help="'-' for stdout")


def run(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(), indent=1) + "\n"
    if args.out == "-":
        print(text, end="")
    else:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0
