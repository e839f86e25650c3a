"""The end-to-end cost section and the robust-accuracy-vs-search-cost plot."""

from __future__ import annotations

import pytest

from rnas.report.collect import RunRow, SeedResult
from rnas.report.cost import cost_rows
from rnas.report.plots import plot_cost


def _seed(seed, search, train, ev, robust):
    return SeedResult(
        seed, {"eval_seconds": ev, "robust_acc": robust}, search={"search_seconds": search}, train={"seconds": train}
    )


def _rows():
    darts = RunRow(
        "darts", "darts", "default", results=[_seed(0, 10.0, 20.0, 30.0, 0.4), _seed(1, 14.0, 22.0, 34.0, 0.5)]
    )
    rnas_cl = RunRow("rnas_cl", "rnas_cl", "width", "width", results=[_seed(0, 5.0, 6.0, 7.0, 0.6)])
    teacher = RunRow(
        "teacher",
        "teacher",
        "small_cnn",
        "family",
        True,
        [SeedResult(0, {"eval_seconds": 9.0, "robust_acc": 0.7}, train={"seconds": 50.0})],
    )
    return [darts, rnas_cl, teacher]


def test_cost_rows_are_per_stage_means_and_their_sum():
    table = {r["run"]: r for r in cost_rows(_rows())}
    assert set(table) == {"darts", "rnas_cl"}  # the teacher is listed apart, not as a run
    d = table["darts"]
    assert (d["seeds"], d["search_seconds"], d["train_seconds"], d["eval_seconds"]) == (2, 12.0, 21.0, 32.0)
    assert d["total"] == pytest.approx(65.0)
    assert not d["needs_teacher"] and table["rnas_cl"]["needs_teacher"]


def test_cost_total_missing_when_a_stage_is_missing():
    row = RunRow("darts", "darts", "default", results=[SeedResult(0, {"eval_seconds": 3.0, "robust_acc": 0.1})])
    (r,) = cost_rows([row])
    assert r["search_seconds"] is None and r["total"] is None


def test_cost_plot_written_with_and_without_data(tmp_path):
    from PIL import Image

    png = plot_cost(_rows(), tmp_path / "cost.png")
    empty = plot_cost([], tmp_path / "empty.png")
    assert Image.open(png).size[0] > Image.open(empty).size[0] // 2
    assert png.stat().st_size > 10_000 and empty.stat().st_size > 0
