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


def test_a_budget_run_names_the_search_it_shares():
    rows = [
        RunRow("lrnas", "lrnas", "default", results=[_seed(0, 40.0, 20.0, 30.0, 0.4)]),
        RunRow("lrnas_10k", "lrnas", "10k", results=[_seed(0, 40.0, 18.0, 29.0, 0.3)]),
    ]
    table = {r["run"]: r for r in cost_rows(rows)}
    assert table["lrnas"]["search_from"] is None and table["lrnas_10k"]["search_from"] == "lrnas"


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


def _crowded_labels():
    """Five runs whose means nearly coincide: some labels leave their first place for a leader."""
    import matplotlib.pyplot as plt

    from rnas.report.plots import label_points

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set_xscale("log")
    ax.set_xlim(1, 500)
    ax.set_ylim(30, 70)
    points = [
        ("rnas_cl_nokd", 118.0, 40.2),
        ("dsrna_combined", 120.0, 40.0),
        ("rnas_adv", 125.0, 40.4),
        ("lrnas_15k", 116.0, 39.8),
        ("darts", 122.0, 39.6),
    ]
    return fig, ax, label_points(ax, points)


def test_a_leader_line_starts_at_its_label_not_inside_it():
    """A moved label's leader line runs from the corner of its text nearest the point to the
    point, so it meets the text at a corner and never runs along or into the word (drawn from the
    text's centre, it met the word's edge in the middle, as `dsrna_cb`'s on the digits report's
    Pareto plot)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from rnas.report.plots import text_box

    fig, ax, notes = _crowded_labels()
    renderer = fig.canvas.get_renderer()
    led = [n for n in notes if n.arrow_patch is not None]
    assert led  # the crowded labels were moved (so the test can fail)
    for note in led:
        box = text_box(note, renderer)
        verts = note.arrow_patch.get_path().interpolated(50).vertices  # display coordinates, once drawn
        inner = box.padded(-1.0)  # one pixel inside the text's box
        assert not any(inner.contains(u, v) for u, v in verts), note.get_text()
        marker = ax.transData.transform(note.xy)
        start, end = verts[0], verts[-1]
        assert np.hypot(*(marker - end)) < np.hypot(*(marker - start))  # it ends at the point
        corners = np.array([(box.x0, box.y0), (box.x0, box.y1), (box.x1, box.y0), (box.x1, box.y1)])
        nearest = corners[np.argmin(np.hypot(*(corners - marker).T))]
        assert np.hypot(*(start - nearest)) < 8.0, note.get_text()  # within the text's pad of its corner
    plt.close(fig)


def test_labels_keep_off_error_bars():
    """A run's label whose first place (right of its marker) lies on a neighbour's error bar moves
    when the bars are given as lines to avoid (`errorbar_lines`, as the Pareto and cost plots
    pass them), so every run's spread stays readable."""
    import matplotlib.pyplot as plt

    from rnas.report.plots import _line_samples, errorbar_lines, label_points, text_box

    assert errorbar_lines(10.0, 40.0) == []
    assert errorbar_lines(10.0, 40.0, xerr=2.0, yerr=5.0) == [([10.0, 10.0], [35.0, 45.0]), ([8.0, 12.0], [40.0, 40.0])]

    def place(avoid):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        ax.set_xscale("log")
        ax.set_xlim(1, 500)
        ax.set_ylim(30, 70)
        bars = errorbar_lines(24.0, 60.0, yerr=20.0)  # a neighbour above "near", its bar passing right of it
        ax.errorbar(24.0, 60.0, yerr=20.0, fmt="o")
        notes = label_points(ax, [("near", 20.0, 44.0), ("bar", 24.0, 60.0)], avoid_lines=bars if avoid else ())
        renderer = fig.canvas.get_renderer()
        box = text_box(next(n for n in notes if n.get_text() == "near"), renderer)
        covered = any(box.contains(u, v) for u, v in _line_samples(ax, bars))
        plt.close(fig)
        return covered

    assert place(avoid=False)  # the first place covers the bar (so the test can fail)
    assert not place(avoid=True)


def test_error_bars_reaching_zero_on_a_log_axis_are_sampled_to_the_axis_edge():
    """The cost plot's search seconds are on a log axis, and a spread larger than the mean gives a
    bar below 0: it is sampled from the axis' edge, not as NaN."""
    import math

    import matplotlib.pyplot as plt

    from rnas.report.plots import _line_samples, errorbar_lines

    fig, ax = plt.subplots()
    ax.set_xscale("log")
    ax.set_xlim(1, 100)
    ax.set_ylim(0, 10)
    samples = _line_samples(ax, errorbar_lines(3.0, 5.0, xerr=4.0))
    assert samples and all(math.isfinite(u) and math.isfinite(v) for u, v in samples)
    plt.close(fig)
