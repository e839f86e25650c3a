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


def test_labels_of_nearby_points_do_not_overlap():
    """Three runs whose means nearly coincide (as darts, rnas and lrnas at ~120-180 s and ~40% on
    digits): the labels get boxes that do not overlap, stay inside the axes and cover no marker;
    the ones moved above or below a leader line; a lone point keeps the first place."""
    import matplotlib.pyplot as plt

    from rnas.report.plots import label_points, text_box

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_xscale("log")
    ax.set_xlim(1, 500)
    ax.set_ylim(30, 70)
    points = [("darts", 118.0, 39.8), ("rnas", 166.0, 40.9), ("lrnas", 182.0, 40.6), ("rnas_cl", 20.0, 48.4)]
    notes = label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [text_box(n, renderer) for n in notes]
    assert [n.get_text() for n in notes] == ["rnas_cl", "rnas", "lrnas", "darts"]  # by decreasing y
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    frame = ax.get_window_extent(renderer)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    centres = [ax.transData.transform((x, y)) for _, x, y in points]
    assert not any(b.contains(u, v) for b in boxes for u, v in centres)  # no label on a marker
    assert notes[0].arrow_patch is None  # alone: its first place, no leader
    assert any(n.arrow_patch is not None for n in notes[1:])  # a crowded one was moved
    plt.close(fig)


def test_labels_keep_off_a_line_they_are_told_to_avoid():
    """A point just below a line (as a run near the report's Pareto front): its first place, to the
    right, covers the line; with the line in ``avoid_lines`` the label goes where it covers none
    of it, and a label far from the line keeps its first place."""
    import matplotlib.pyplot as plt

    from rnas.report.plots import _line_samples, label_points, text_box

    def place(avoid):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.set_xscale("log")
        ax.set_xlim(1, 500)
        ax.set_ylim(30, 70)
        line = ([1.0, 500.0], [50.0, 50.0])
        ax.plot(*line)
        notes = label_points(ax, [("on_front", 20.0, 49.0), ("far", 3.0, 35.0)], avoid_lines=[line] if avoid else ())
        renderer = fig.canvas.get_renderer()
        boxes = {n.get_text(): text_box(n, renderer) for n in notes}
        crossed = any(boxes["on_front"].contains(u, v) for u, v in _line_samples(ax, [line]))
        far_first = next(n for n in notes if n.get_text() == "far").arrow_patch is None
        plt.close(fig)
        return crossed, far_first

    assert place(avoid=False)[0]  # the first place covers the line (so the test can fail)
    crossed, far_first = place(avoid=True)
    assert not crossed and far_first


def test_reference_label_above_every_run_stays_inside_the_axes():
    """The teacher's line above every run (as on digits: 62% against 39-51%) keeps its label inside
    the axes: the y axis is raised to make room; a line inside the data leaves the axis alone."""
    import matplotlib.pyplot as plt

    from rnas.report.plots import reference_line

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_xscale("log")
    ax.scatter([1.0, 20.0, 60.0], [40.0, 51.0, 39.0])
    limits = ax.get_ylim()
    note = reference_line(ax, limits[1], " teacher (reference)")  # the line at the very top
    renderer = fig.canvas.get_renderer()
    box, frame = note.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
    assert ax.get_ylim()[1] > limits[1]
    before = ax.get_ylim()
    reference_line(ax, 45.0, " other")
    assert ax.get_ylim() == before
    plt.close(fig)
