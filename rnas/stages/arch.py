"""``rnas arch params FILE --init-channels C --layers L --num-classes K``: parameter count of
a final network (auxiliary head excluded), printed as the last line; ``rnas arch macs`` the
multiply-adds of one forward pass.

A width-space ``architecture.json`` (RNAS-CL) rebuilds its network by itself: ``rnas arch params
architecture.json`` needs no size arguments (``--num-classes`` and ``--input-channels`` override
the file's; ``macs`` uses the searched image size unless ``--image-size`` is given)."""

from __future__ import annotations

import argparse

from rnas.evaluation.complexity import count_macs, count_parameters
from rnas.space.genotype import load_genotype
from rnas.space.network import CellNetwork
from rnas.space.width import build_width_network, is_width_file, load_width_architecture


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=("params", "macs"), help="what to count")
    p.add_argument("file", help="genotype.json (cell space) or architecture.json (width space)")
    p.add_argument("--init-channels", type=int, help="cell space: C of the final network (required)")
    p.add_argument("--layers", type=int, help="cell space: cells of the final network (required)")
    p.add_argument("--num-classes", type=int, help="required for the cell space; overrides a width file's")
    p.add_argument("--input-channels", type=int, help="default 3 (cell space) or the width file's")
    p.add_argument("--image-size", type=int, help="input side for macs (default 32, or the width file's)")


def run(args: argparse.Namespace) -> int:
    if is_width_file(args.file):
        arch = load_width_architecture(args.file)
        model_args = dict(arch["network"])
        for key in ("num_classes", "input_channels"):
            if getattr(args, key) is not None:
                model_args[key] = getattr(args, key)
        net = build_width_network(model_args)
        input_channels = model_args["input_channels"]
        image_size = args.image_size or arch.get("image_size", 32)
    else:
        missing = [
            f"--{k.replace('_', '-')}" for k in ("init_channels", "layers", "num_classes") if getattr(args, k) is None
        ]
        if missing:
            raise SystemExit(f"rnas arch: a cell-space genotype needs {' '.join(missing)}")
        genotype = load_genotype(args.file)
        input_channels = args.input_channels or 3
        image_size = args.image_size or 32
        net = CellNetwork(genotype, args.init_channels, args.layers, args.num_classes, input_channels)
    if args.what == "params":
        print(count_parameters(net))
    else:
        print(count_macs(net, (input_channels, image_size, image_size)))
    return 0
