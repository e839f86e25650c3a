"""The cell an undecided search left open (``rnas alternative``): derived from the search's own
per-epoch α as the final cell is, retrained with the one recipe and evaluated with the one
protocol, so its numbers differ from the final cell's only by the cell; the report pairs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import tiny_params

from rnas import paths
from rnas.config import load_params
from rnas.runs import has_alternative
from rnas.search.alternative import alternative_cell, snapshot_genotype
from rnas.space.genotype import PRIMITIVES, derive_genotype

NODES = 4


def _snapshot(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    rows = [torch.softmax(2 * torch.randn(14, len(PRIMITIVES), generator=g), dim=1).tolist() for _ in range(2)]
    return {"normal": rows[0], "reduce": rows[1]}


def _with_other_op(snapshot: dict) -> dict:
    """``snapshot`` with the op of the normal cell's first kept edge swapped for that edge's next
    best non-``none`` op (the edge's strength, hence the kept inputs, stay)."""
    genotype = snapshot_genotype(snapshot, PRIMITIVES, NODES)
    op, src = genotype.normal[0]
    row = list(snapshot["normal"][src])
    chosen = PRIMITIVES.index(op)
    runner_up = max((k for k in range(len(row)) if k not in (chosen, PRIMITIVES.index("none"))), key=row.__getitem__)
    row[chosen], row[runner_up] = row[runner_up], row[chosen]
    rows = [list(r) for r in snapshot["normal"]]
    rows[src] = row
    return {**snapshot, "normal": rows}


def _search_files(final: dict, per_epoch: list[dict]) -> tuple[dict, dict]:
    genotype = snapshot_genotype(final, PRIMITIVES, NODES).to_dict()
    return genotype, {"primitives": list(PRIMITIVES), **final, "per_epoch": per_epoch}


def test_alternative_is_the_last_epochs_other_cell():
    final = _snapshot(0)
    other = _with_other_op(final)
    genotype, alphas = _search_files(final, [_snapshot(1), other, final, final])
    epoch, cell, moved = alternative_cell(genotype, alphas)
    assert epoch == 2 and moved == ["normal[0][0]"]
    assert cell == snapshot_genotype(other, PRIMITIVES, NODES) and cell.to_dict() != genotype
    assert cell.normal[1:] == tuple(tuple(e) for e in genotype["normal"][1:])  # one entry moved, no other
    # Epoch 1's cell is further back: the alternative is the most recent other cell.
    genotype, alphas = _search_files(final, [other, _snapshot(1), final])
    assert alternative_cell(genotype, alphas)[0] == 2
    # No other cell in any epoch: nothing to retrain.
    genotype, alphas = _search_files(final, [final] * 3)
    assert alternative_cell(genotype, alphas) is None


def test_alternative_refuses_alphas_that_do_not_stand_for_the_search():
    final = _snapshot(0)
    genotype, alphas = _search_files(final, [final, _snapshot(1)])  # the last epoch is not the final cell
    with pytest.raises(ValueError, match="does not derive"):
        alternative_cell(genotype, alphas)
    with pytest.raises(ValueError, match="per_epoch"):
        alternative_cell(genotype, {**alphas, "per_epoch": []})


def test_snapshot_cells_scale_by_pc_darts_edge_weights():
    snap = _snapshot(3)
    edges = [float(i % 3 + 1) / 3 for i in range(14)]
    scaled = {**snap, "normal_edges": edges, "reduce_edges": edges[::-1]}
    want = derive_genotype(
        torch.tensor(snap["normal"]) * torch.tensor(edges)[:, None],
        torch.tensor(snap["reduce"]) * torch.tensor(edges[::-1])[:, None],
        NODES,
    )
    assert snapshot_genotype(scaled, PRIMITIVES, NODES) == want
    assert snapshot_genotype(snap, PRIMITIVES, NODES) != want  # these weights change the kept inputs


def test_which_runs_have_an_alternative():
    assert all(has_alternative(r) for r in ("darts", "rnas", "rnas_adv", "dsrna_cb", "rnas_cl_cell"))
    for run in ("random", "lrnas", "lrnas_10k", "rnas_cl", "rnas_cl_nokd", "rnas_cl_cell_nokd"):
        assert not has_alternative(run), run


def _rnas(project, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", GIT_PYTHON_REFRESH="quiet", RNAS_FORKSERVER="off")
    out = subprocess.run(
        [sys.executable, "-m", "rnas.cli", *args], cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_alternative_stage_is_the_pipelines_retrain_and_evaluate_of_that_cell(tmp_path, monkeypatch):
    """An undecided search: ``rnas alternative`` writes the alternative cell and its model, train
    and eval files; ``rnas retrain`` + ``rnas evaluate`` of a search whose final cell is that cell
    give the same weights and the same per-example flags (one recipe, one protocol). A decided
    search has nothing to retrain."""
    p = tiny_params(runs=("darts",))
    p["tracking"]["enabled"] = False
    p["pipeline"]["alternative_cells"] = True
    p["evaluate"]["attacks"] = ["fgsm", "pgd20"]
    final = _snapshot(0)
    other = _with_other_op(final)
    for name, (last, decided) in {"a": (final, False), "b": (other, True)}.items():
        project = tmp_path / name
        project.mkdir()
        (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
        params = load_params(project / "params.yaml")
        run_dir = project / paths.run_dir(params, "darts", 0)
        run_dir.mkdir(parents=True)
        genotype, alphas = _search_files(last, [_snapshot(1), other, final, last])
        (run_dir / "genotype.json").write_text(json.dumps(genotype))
        (run_dir / "alphas.json").write_text(json.dumps(alphas))
        (run_dir / "search.json").write_text(json.dumps({"decided": decided, "stable_from_epoch": 4}))
    a, b = tmp_path / "a", tmp_path / "b"
    params = load_params(a / "params.yaml")
    _rnas(a, "alternative", "--run", "darts", "--seed", "0")
    alt = a / paths.alternative_dir(params, "darts", 0)
    summary = json.loads((alt / "summary.json").read_text())
    assert summary["retrained"] and summary["epoch"] == 2 and summary["moved"] == ["normal[0][0]"]
    assert json.loads((alt / "genotype.json").read_text()) == snapshot_genotype(other, PRIMITIVES, NODES).to_dict()
    # Project b's search ended on the alternative cell (and decided): nothing to retrain there
    # (the summary's decision, taken in this process), and retrained as the pipeline does.
    from rnas.stages.alternative import _summary

    monkeypatch.chdir(b)  # the params' results folder is relative
    assert _summary(params, "darts", 0) == (
        {
            "run": "darts",
            "seed": 0,
            "decided": True,
            "stable_from_epoch": 4,
            "retrained": False,
            "reason": "the search decided: its cell held over the last quarter",
        },
        None,
    )
    _rnas(b, "retrain", "--run", "darts", "--seed", "0")
    _rnas(b, "evaluate", "--run", "darts", "--seed", "0")
    mine = torch.load(alt / "model.pt", weights_only=True)["state_dict"]
    theirs = torch.load(b / paths.model_file(params, "darts", 0), weights_only=True)["state_dict"]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    flags = json.loads((alt / "flags.json").read_text())
    assert flags == json.loads((b / paths.flags_file(params, "darts", 0)).read_text())
    ev = json.loads((alt / "eval.json").read_text())
    assert (
        ev["robust_acc"]
        == summary["robust_acc"]
        == json.loads((b / paths.eval_file(params, "darts", 0)).read_text())["robust_acc"]
    )


def test_report_section_pairs_each_alternative_with_its_final_cell(tmp_path):
    import numpy as np

    from rnas.config import params_from_dict
    from rnas.evaluation.flags import write_flags
    from rnas.report.alternatives import alternatives_markdown
    from rnas.report.stats import mcnemar_exact

    p = tiny_params(runs=("darts", "random"))
    p["pipeline"].update(seeds=[0, 1, 2], results=str(tmp_path), alternative_cells=False)
    params = params_from_dict(p)
    n = 40
    robust = {0: 0.50, 1: 0.60, 2: 0.40}
    for seed, acc in robust.items():
        d = paths.run_dir(params, "darts", seed)
        d.mkdir(parents=True)
        flags = {"clean": np.ones(n, bool), "robust": np.arange(n) < int(acc * n)}
        write_flags(paths.flags_file(params, "darts", seed), flags)
        (d / "eval.json").write_text(json.dumps({"clean_acc": 1.0, "robust_acc": acc}))
    alt = paths.alternative_dir(params, "darts", 0)
    alt.mkdir()
    alt_robust = np.arange(n) >= n - 26  # 26 of 40 robust (65%), 6 of them where the final cell is
    write_flags(alt / "flags.json", {"clean": np.arange(n) < 38, "robust": alt_robust})
    summary = {"retrained": True, "epoch": 11, "moved": ["reduce[0][0]"], "clean_acc": 0.95, "robust_acc": 0.65}
    (alt / "summary.json").write_text(json.dumps(summary))
    decided = paths.alternative_dir(params, "darts", 1)
    decided.mkdir()
    (decided / "summary.json").write_text(json.dumps({"retrained": False, "decided": True}))
    assert alternatives_markdown(params) == ""  # pipeline.alternative_cells off
    on = params_from_dict({**p, "pipeline": {**p["pipeline"], "alternative_cells": True}})
    text = alternatives_markdown(on)
    final_robust = np.arange(n) < 20
    pvalue = mcnemar_exact(alt_robust, final_robust)[2]
    assert "Of 2 gradient cell-space searches, 1 did not decide" in text
    assert f"| darts | 0 | 11 | `reduce[0][0]` | 50.0 | 65.0 | +15.0 | -5.0 | {pvalue:.2g} |" in text
    sd = 100 * float(np.std([0.5, 0.6, 0.4], ddof=1))
    assert "mean +15.0, mean absolute 15.0, from +15.0 to +15.0 points" in text
    assert f"robust accuracy is {sd:.1f}–{sd:.1f} points" in text
    assert pvalue > 0.05 and "0 of 1 differences significant at 0.05" in text  # 20 vs 14 discordant


def _alternatives_with(tmp_path, per_search: dict[int, tuple[int, int]], n: int = 100) -> str:
    """The section for darts seeds whose final cell gets ``final`` of n examples robust and
    whose alternative ``alt`` (``per_search``: seed -> (final, alt)), the alternative's robust
    examples a superset or subset of the final's (no discordant pair the other way)."""
    import numpy as np

    from rnas.config import params_from_dict
    from rnas.evaluation.flags import write_flags
    from rnas.report.alternatives import alternatives_markdown

    p = tiny_params(runs=("darts", "random"))
    p["pipeline"].update(seeds=sorted(per_search), results=str(tmp_path), alternative_cells=True)
    params = params_from_dict(p)
    for seed, (final, alt) in per_search.items():
        d = paths.run_dir(params, "darts", seed)
        d.mkdir(parents=True)
        write_flags(
            paths.flags_file(params, "darts", seed), {"clean": np.ones(n, bool), "robust": np.arange(n) < final}
        )
        (d / "eval.json").write_text(json.dumps({"clean_acc": 1.0, "robust_acc": final / n}))
        a = paths.alternative_dir(params, "darts", seed)
        a.mkdir()
        write_flags(a / "flags.json", {"clean": np.ones(n, bool), "robust": np.arange(n) < alt})
        summary = {"retrained": True, "epoch": 11, "moved": ["normal[0][0]"], "clean_acc": 1.0, "robust_acc": alt / n}
        (a / "summary.json").write_text(json.dumps(summary))
    return alternatives_markdown(params)


def test_report_section_tests_the_direction_over_the_searches(tmp_path):
    from scipy import stats

    # Δ = +6, +4, +8 points: a consistent direction, the t interval by hand (1,000 examples, so
    # the example-level floor of the standard error, 0.4 points, stays below the seeds' 1.2).
    d = [6.0, 4.0, 8.0]
    text = _alternatives_with(tmp_path / "up", {0: (400, 460), 1: (500, 540), 2: (450, 530)}, n=1000)
    sd, mean = stats.tstd(d), sum(d) / 3
    half = stats.t.ppf(0.975, 2) * sd / 3**0.5
    p = 2 * stats.t.sf(mean / (sd / 3**0.5), 2)
    assert f"mean Δ robust +6.0 points, 95% interval [{mean - half:+.1f}, {mean + half:+.1f}], p {p:.2g}" in text
    assert "3 alternatives more robust, 0 less, 0 equal" in text
    assert "**The alternative cells are more robust than the final ones**" in text
    # Δ = +5, −4, 0: no direction, and the smallest detectable difference is printed.
    text = _alternatives_with(tmp_path / "mixed", {0: (40, 45), 1: (50, 46), 2: (45, 45)})
    assert "1 alternatives more robust, 1 less, 1 equal" in text
    assert "No consistent direction" in text and "could detect:" in text
    # One search is no replicate set: the per-search table only.
    text = _alternatives_with(tmp_path / "one", {0: (40, 45)})
    assert "| darts | 0 | 11 |" in text and "paired t" not in text
