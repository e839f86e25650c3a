"""``rnas certify --run RUN --seed K`` (or ``--run teacher``, or ``--model PATH``): certified accuracy.

Certified accuracy at ε of a trained model (any network of the cell space; the fixed families
whose layers the bounds support) on the evaluation's test examples, with IBP, CROWN (CROWN-IBP)
or both (per specification the tighter). Defaults come from ``evaluate`` in the params file
(ε = ``evaluate.epsilon``, L∞, ``evaluate.certify_method``, the first ``evaluate.n_examples``
test examples); the flags override them. Prints the result as JSON; ``--out`` also writes it.
The evaluate stage records the same numbers in eval.json (``certified_acc``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rnas import paths
from rnas.bounds import CERTIFY_METHODS, NORMS, UnsupportedModelError
from rnas.checkpoint import load_model
from rnas.evaluation.certify import certify
from rnas.runtime import place_model
from rnas.stages.common import add_run_arguments, load_data, log, prepare, write_json

EVAL_DATA_SEED = 0  # the evaluation's test examples (rnas.stages.evaluate)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_run_arguments(p, allow_teacher=True)
    p.add_argument("--model", default=None, help="checkpoint to certify (default: the run's model.pt)")
    p.add_argument(
        "--method",
        choices=tuple(CERTIFY_METHODS),
        default=None,
        help="bound: ibp | crown | both (default: evaluate.certify_method)",
    )
    p.add_argument("--epsilon", type=float, default=None, help="radius, pixel units (default: evaluate.epsilon)")
    p.add_argument("--norm", choices=NORMS, default="linf", help="threat model (default: linf)")
    p.add_argument(
        "--intermediate",
        choices=("ibp", "crown"),
        default=None,
        help="CROWN's intermediate bounds: ibp (CROWN-IBP) | crown (full CROWN; default: "
        "evaluate.certify_intermediate)",
    )
    p.add_argument("--n-examples", type=int, default=None, help="test examples (default: evaluate.n_examples)")
    p.add_argument("--out", default=None, help="also write the JSON result here")


def run(args: argparse.Namespace) -> int:
    params, device = prepare(args, args.seed)
    e = params.evaluate
    method = args.method or e.certify_method
    if method not in CERTIFY_METHODS:
        raise SystemExit(f"rnas certify: evaluate.certify_method is {method!r}; pass --method ibp|crown|both")
    epsilon = e.epsilon if args.epsilon is None else args.epsilon
    if not epsilon >= 0:
        raise SystemExit(f"rnas certify: --epsilon must be >= 0, got {epsilon}")
    model_path = Path(args.model) if args.model else paths.model_file(params, args.run, args.seed)
    splits = load_data(params, EVAL_DATA_SEED)
    model, _ckpt = load_model(model_path, device)
    model = place_model(model, device, params.pipeline.channels_last).eval()
    n = min(e.n_examples if args.n_examples is None else args.n_examples, len(splits.test))
    x, y = splits.test.x[:n].to(device), splits.test.y[:n].to(device)
    try:
        result = certify(
            model, x, y, epsilon, args.norm, method, e.certify_batch_size, args.intermediate or e.certify_intermediate
        )
    except UnsupportedModelError as err:
        print(f"rnas certify: cannot bound {model_path}: {err}", file=sys.stderr)
        return 1
    out = {
        "model": str(model_path),
        "n_examples": n,
        **result.metrics(),
        "mean_margin_bound": float(result.margin.mean()),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        write_json(Path(args.out), out)
    log.info(
        "certify %s: %.3f certified at ε=%g (%s, %s) in %.1f s",
        model_path,
        result.accuracy,
        epsilon,
        args.norm,
        method,
        result.seconds,
    )
    return 0
