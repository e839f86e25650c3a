"""The search-stability measure (rnas.search.stability)."""

from rnas.search.stability import (
    changed_entries,
    decision_digest,
    decision_entries,
    is_decided,
    last_quarter_start,
    late_changes,
    stability_summary,
    stable_from,
)


def test_stable_from_finds_the_final_unchanged_stretch():
    assert stable_from([]) is None
    assert stable_from(["a"]) == 0
    assert stable_from(["a", "a", "a"]) == 0
    assert stable_from(["a", "b", "b", "b"]) == 1
    # A decision that comes back counts from its last return, not its first appearance.
    assert stable_from(["b", "a", "b", "b"]) == 2
    assert stable_from(["a", "b", "a", "b"]) == 3


def test_last_quarter_rule():
    # 20 epochs: the last quarter is epochs 15..19; the decision of epoch 14 must survive them.
    assert last_quarter_start(20) == 15 and last_quarter_start(12) == 9 and last_quarter_start(2) == 1
    assert is_decided(14, 20)
    assert is_decided(0, 20)
    assert not is_decided(15, 20)
    # 4 epochs: the last quarter is epoch 3 alone; it must not change the decision of epoch 2.
    assert is_decided(2, 4) and not is_decided(3, 4)
    # ... but a 1-epoch search has nothing to compare.
    assert not is_decided(0, 1)
    assert not is_decided(None, 10)
    # 10 epochs: ceil(2.5) = 3 epochs, 7..9, after epoch 6.
    assert is_decided(6, 10) and not is_decided(7, 10)


def test_summary_is_one_based_and_counts_changes():
    s = stability_summary(["a", "b", "b", "c", "c", "c", "c", "c"], 8)
    assert s == {"stable_from_epoch": 4, "decided": True, "decision_changes": 2}
    assert not stability_summary(["a", "b", "b", "b", "b", "b", "c", "c"], 8)["decided"]
    assert stability_summary([], 8) == {"stable_from_epoch": None, "decided": False, "decision_changes": 0}
    # Undecided: the decision changed in the last epoch.
    assert not stability_summary(["a"] * 7 + ["b"], 8)["decided"]


def test_digest_ignores_key_order_but_not_values():
    assert decision_digest({"a": 1, "b": [1, 2]}) == decision_digest({"b": [1, 2], "a": 1})
    assert decision_digest({"a": 1}) != decision_digest({"a": 2})


def _genotype(normal_input: int, reduce_op: str) -> dict:
    return {
        "normal": [["sep_conv_3x3", 0], ["skip_connect", normal_input]],
        "normal_concat": [2],
        "reduce": [[reduce_op, 1], ["avg_pool_3x3", 0]],
        "reduce_concat": [2],
    }


def test_decision_entries_name_every_op_and_input():
    entries = decision_entries(_genotype(1, "max_pool_3x3"))
    assert entries["normal[1][0]"] == "skip_connect" and entries["normal[1][1]"] == 1
    assert entries["reduce[0][0]"] == "max_pool_3x3" and entries["reduce_concat[0]"] == 2
    assert len(entries) == 10
    assert decision_entries({"widths": [8, 6]}) == {"widths[0]": 8, "widths[1]": 6}


def test_late_changes_name_what_moved_in_the_last_quarter():
    # 12 epochs: the window is epoch 8 (the one before the last quarter) through 11.
    settled = [_genotype(0, "max_pool_3x3")] * 8 + [_genotype(1, "dil_conv_3x3")] * 4
    assert late_changes(settled, 12) == {"late_changed": [], "decision_entries": 10}
    # The normal cell's second input toggles at epoch 10; the reduce op changed at epoch 7
    # (before the window) and is not named.
    toggling = [_genotype(0, "max_pool_3x3")] * 7 + [_genotype(0, "dil_conv_3x3")] * 3
    toggling += [_genotype(1, "dil_conv_3x3"), _genotype(0, "dil_conv_3x3")]
    assert late_changes(toggling, 12)["late_changed"] == ["normal[1][1]"]
    # An entry that appears or vanishes (a width list that grew) counts too.
    assert late_changes([{"w": [8]}, {"w": [8, 4]}], 2)["late_changed"] == ["w[1]"]
    assert late_changes([_genotype(0, "x")], 12) == {}


def test_changed_entries_in_the_final_order_then_vanished_paths():
    final = {"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "widths": [8]}
    value = {"normal": [["sep_conv_3x3", 1], ["max_pool_3x3", 1]], "widths": [8, 4]}
    assert changed_entries(value, final) == ["normal[0][1]", "normal[1][0]", "widths[1]"]
    assert changed_entries(final, value) == ["normal[0][1]", "normal[1][0]", "widths[1]"]
    assert changed_entries(final, final) == []


def test_late_changes_are_empty_exactly_when_decided():
    import random

    rng = random.Random(0)
    for _ in range(300):
        epochs = rng.randint(2, 14)
        values = [_genotype(rng.randint(0, 1), rng.choice("ab")) for _ in range(epochs)]
        decided = stability_summary([decision_digest(v) for v in values], epochs)["decided"]
        assert (late_changes(values, epochs)["late_changed"] == []) == decided


def _flipping_method(switch_at: int):
    """A search whose derived choice is 'a' until ``switch_at`` epochs have ended, then 'b'."""
    import torch

    from rnas.search.base import SearchMethod

    class Flipping(SearchMethod):
        def setup(self, ctx):
            super().setup(ctx)
            self.epochs_done = torch.zeros(1)

        def step(self, batch_w, batch_a, progress):
            return {}

        def end_epoch(self, epoch):
            self.epochs_done += 1
            return {}

        def architecture(self):
            return {"op": "a" if self.epochs_done.item() <= switch_at else "b", "p": self.epochs_done.item()}

        def decision(self):
            return self.architecture()["op"]

        def side_decisions(self):  # a choice beside the network that flips every epoch
            return {"tutor": int(self.epochs_done.item()) % 2}

        def epoch_snapshot(self):  # the continuous state behind the choice
            return {"n": self.epochs_done.item()}

        def state_dict(self):
            return {"n": self.epochs_done.clone()}

        def load_state_dict(self, state):
            self.epochs_done = state["n"].clone()

    return Flipping()


def test_loop_records_one_decision_per_epoch_across_a_resume(tmp_path):
    import torch
    from conftest import tiny_params, tiny_splits

    from rnas.checkpoint import ResumeState
    from rnas.config import params_from_dict
    from rnas.runs import resolve_run
    from rnas.search.loop import run_search

    p = tiny_params()
    p["search"].update(epochs=6, batch_size=8)
    params = params_from_dict(p)
    splits = tiny_splits(n_train=32)
    ctx = {"params": params, "run": resolve_run("darts"), "info": splits.info, "device": torch.device("cpu"), "seed": 0}
    # Uninterrupted: 'a' after epochs 1-2, 'b' from the third epoch (index 2) on.
    full = run_search(_flipping_method(2), ctx, splits, progress=False)
    assert full.decisions == [decision_digest("a")] * 2 + [decision_digest("b")] * 4
    assert stability_summary(full.decisions, 6) == {"stable_from_epoch": 3, "decided": True, "decision_changes": 1}
    # Stopped after 3 epochs and resumed: the decisions of the first process are kept.
    p["search"]["epochs"] = 3
    resume = ResumeState(tmp_path / "s", params_hash="h")
    run_search(_flipping_method(2), {**ctx, "params": params_from_dict(p)}, splits, resume=resume, progress=False)
    resumed = run_search(
        _flipping_method(2), ctx, splits, resume=ResumeState(tmp_path / "s", params_hash="h"), progress=False
    )
    assert resumed.start_epoch == 3 and resumed.decisions == full.decisions
    assert full.decision_values == ["a"] * 2 + ["b"] * 4 and resumed.decision_values == full.decision_values
    assert full.snapshots == [{"n": float(n)} for n in range(1, 7)] and resumed.snapshots == full.snapshots
    # The side choice is tracked per epoch on its own (and kept across the resume); it never
    # settles, while the architecture decided.
    assert full.side_decisions == {"tutor": [decision_digest(n % 2) for n in range(1, 7)]}
    assert resumed.side_decisions == full.side_decisions
    assert stability_summary(full.side_decisions["tutor"], 6)["decided"] is False


def test_report_section_flags_undecided_searches(tmp_path):
    import json

    from conftest import tiny_params

    from rnas import paths
    from rnas.config import params_from_dict
    from rnas.report.decisions import decisions_markdown

    p = tiny_params(runs=("darts", "random"))
    p["pipeline"].update(results=str(tmp_path / "results"), seeds=[0, 1])
    params = params_from_dict(p)
    assert decisions_markdown(params) == ""
    for seed, values in ((0, list("aabbbbbb")), (1, list("abababab"))):
        summary = {**stability_summary(values, 8), **late_changes([{"op": v} for v in values], 8)}
        f = paths.search_log(params, "darts", seed)
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps({"search_seconds": 1.0, "history": [{}] * 8, **summary}))
    (f.parent / "alphas.json").write_text(json.dumps({"normal": [[0.5, 0.5]], "reduce": [[1.0, 0.0]]}))
    md = decisions_markdown(params)
    assert "**1 of 2 searches decided.** Undecided: darts (seed 1)." in md
    assert "| darts | 0 | 3/8 | yes | 1 | 0 of 1 |" in md
    assert "| darts | 1 | 8/8 | **no** | 7 | 1 of 1 | 100% | 0% | – |" in md
    assert "- darts (seed 1): `op`" in md.split("What still moved")[1]
    # A choice beside the network (RNAS-CL's tutors) gets its own column and does not count.
    f = paths.search_log(params, "darts", 0)
    side = {"tutors": stability_summary(list("abababab"), 8)}
    f.write_text(json.dumps({**json.loads(f.read_text()), "side_stability": side}))
    md = decisions_markdown(params)
    assert "**1 of 2 searches decided.**" in md
    assert "| darts | 0 | 3/8 | yes | 1 | 0 of 1 | – | – | tutors: 8/8 (unsettled), 7 changes |" in md


def _lrnas_contributions(momentum_late):
    # Three estimates at epochs 4, 6 and 7 of an 8-epoch search (the last quarter: epochs 6 and 7).
    return {
        "epochs": [4, 6, 7],
        "value": [[1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0], [5.0, 5.0, 5.0, 5.0]],
        "momentum": [[9.0, 9.0, 9.0], momentum_late, [7.0, 7.0, 7.0]],
        "alpha": {"normal": [[0.1, 0.5], [0.3, 0.2]], "reduce": [[0.0, 0.9]]},
    }


def test_lrnas_diagnostics_by_hand():
    import math

    from rnas.report.decisions import lrnas_diagnostics

    history = [{}] * 6 + [{"shapley_step_factor": 0.5}, {"shapley_step_factor": 0.25}]
    d = lrnas_diagnostics(_lrnas_contributions([1.0, -2.0, 3.0]), history, step_size=0.1, epochs=8)
    # r of the first two estimates is 1; the constant third one has no correlation and is left out.
    assert d["agreement"] == 1.0
    # Per-edge maxima 0.5, 0.3, 0.9 -> sorted 0.3, 0.5, 0.9: neighbour gaps 0.2 and 0.4.
    assert math.isclose(d["order_gap"], 0.3)
    # The first estimate in the last quarter is epoch 6: 0.1 x 0.5 x median(|1|, |-2|, |3|) = 0.1.
    assert math.isclose(d["late_step"], 0.1)
    # A search whose estimates all came before the last quarter has no late step.
    early = {**_lrnas_contributions([1.0, 1.0, 1.0]), "epochs": [1, 2, 3]}
    assert math.isnan(lrnas_diagnostics(early, history, 0.1, 8)["late_step"])


def test_report_section_explains_lrnas_selections(tmp_path):
    import json

    from conftest import tiny_params

    from rnas import paths
    from rnas.config import params_from_dict
    from rnas.report.decisions import decisions_markdown

    p = tiny_params(runs=("darts", "lrnas", "lrnas_10k"))
    p["pipeline"].update(results=str(tmp_path / "results"), seeds=[0])
    p["search"]["epochs"] = 8
    p["search"].setdefault("methods", {}).setdefault("lrnas", {}).update(step_size=0.1, warmup_epochs=4)
    params = params_from_dict(p)
    history = [{}] * 6 + [{"shapley_step_factor": 0.5}, {"shapley_step_factor": 0.25}]
    for run in ("darts", "lrnas", "lrnas_10k"):
        f = paths.search_log(params, run, 0)
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps({"history": history, **stability_summary(list("aaaaaaab"), 8)}))
    for run in ("lrnas", "lrnas_10k"):
        contributions = paths.search_log(params, run, 0).parent / "contributions.json"
        contributions.write_text(json.dumps(_lrnas_contributions([1.0, -2.0, 3.0])))
    md = decisions_markdown(params)
    # the budget run selects from lrnas's search: its figures would repeat lrnas's row
    assert "| lrnas_10k | 0 | 8/8 |" in md and "| lrnas_10k | 0 |" not in md.split("agreement (r)")[1]
    assert "lrnas_10k: no search of their own; each selects under its own budget from the search of lrnas" in md
    # the headline counts searches proper apart from the selections made from them
    assert "**0 of 2 searches decided**, and 0 of 1 budget selections made from them." in md
    # search.json files written before the late changes were recorded: the column says "–".
    assert "| darts | 0 | 8/8 | **no** | 1 | – |" in md and "What still moved" not in md
    assert "| run | seed | agreement (r) | order gap (α) | late step (α) |" in md
    assert "| lrnas | 0 | 1.00 | 0.3000 | 0.1000 |" in md
    assert "| darts | 0 |" not in md.split("agreement (r)")[1]  # only LRNAS searches get a row


def test_search_curves_mark_the_stable_from_epoch():
    from rnas.report.plots import stable_mark

    pts = [(1, 2.0), (2, 1.0), (3, 0.5), (4, 0.4)]
    assert stable_mark({"stable_from_epoch": 3, "decided": True}, pts) == (3, 0.5, True)
    assert stable_mark({"stable_from_epoch": 4, "decided": False}, pts) == (4, 0.4, False)
    assert stable_mark({"stable_from_epoch": None}, pts) is None
    assert stable_mark({}, pts) is None
    assert stable_mark({"stable_from_epoch": 5, "decided": True}, pts) is None  # no point there


def _two_node_cell():
    # Nodes 0 and 1 of a cell: edges 0-1 feed node 0 (inputs 0, 1), edges 2-4 node 1 (inputs 0-2).
    primitives = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]
    rows = [
        [0.1, 0.5, 0.3, 0.1],  # node 0 <- input 0: skip 0.5 leads sep 0.3
        [0.2, 0.1, 0.3, 0.4],  # node 0 <- input 1: max_pool 0.4 leads sep 0.3
        [0.6, 0.1, 0.2, 0.1],  # node 1 <- input 0: `none` is heaviest but never counts; strength 0.2
        [0.1, 0.35, 0.5, 0.05],  # node 1 <- input 1: strength 0.5
        [0.1, 0.45, 0.4, 0.05],  # node 1 <- input 2: strength 0.45
    ]
    genotype = {
        "normal": [["skip_connect", 0], ["max_pool_3x3", 1], ["sep_conv_3x3", 1], ["skip_connect", 2]],
        "normal_concat": [2, 3],
    }
    return genotype, {"primitives": primitives, "normal": rows}


def test_entry_margin_by_hand():
    from rnas.report.decisions import entry_margin

    genotype, alphas = _two_node_cell()
    # The op of the cell's first kept edge (node 0 <- input 0) against that edge's next-best op.
    assert entry_margin("normal[0][0]", genotype, alphas) == "skip_connect 0.500 vs sep_conv_3x3 0.300"
    assert entry_margin("normal[1][0]", genotype, alphas) == "max_pool_3x3 0.400 vs sep_conv_3x3 0.300"
    # Node 1 keeps inputs 1 and 2; the input left out is 0, whose best non-`none` op weighs 0.2.
    assert entry_margin("normal[2][1]", genotype, alphas) == "input 1 0.500 vs input 0 0.200"
    assert entry_margin("normal[3][1]", genotype, alphas) == "input 2 0.450 vs input 0 0.200"
    # Node 0 has no input to leave out; the output list, a width, missing files: no margin.
    assert entry_margin("normal[0][1]", genotype, alphas) is None
    assert entry_margin("normal_concat[0]", genotype, alphas) is None
    assert entry_margin("stage_widths[1]", genotype, alphas) is None
    assert entry_margin("normal[0][0]", None, alphas) is None and entry_margin("normal[0][0]", genotype, None) is None
    assert entry_margin("reduce[0][0]", genotype, alphas) is None
    # PC-DARTS: the derivation scales each edge's weights by its edge weight, and so does the margin.
    scaled = {**alphas, "normal_edges": [1.0, 1.0, 1.0, 0.5, 1.0]}
    assert entry_margin("normal[2][1]", genotype, scaled) == "input 1 0.250 vs input 0 0.200"


def test_entry_margin_agrees_with_the_derivation_on_random_cells():
    """Whatever the weights, the op a margin names first is the derived genotype's op for that
    entry and weighs at least the one named second; an input's strength is at least the one left out."""
    import torch

    from rnas.report.decisions import entry_margin
    from rnas.space.genotype import PRIMITIVES, derive_genotype

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        normal, reduce = (torch.softmax(torch.randn(14, len(PRIMITIVES), generator=g), -1) for _ in range(2))
        genotype = derive_genotype(normal, reduce, 4).to_dict()
        alphas = {"primitives": list(PRIMITIVES), "normal": normal.tolist(), "reduce": reduce.tolist()}
        for kind in ("normal", "reduce"):
            for k, (op, _src) in enumerate(genotype[kind]):
                first, w1, _vs, second, w2 = entry_margin(f"{kind}[{k}][0]", genotype, alphas).split()
                assert first == op and second != op and float(w1) >= float(w2)
                if k >= 2:  # nodes 1-3 leave inputs out
                    _, _, s1, _, _, _, s2 = entry_margin(f"{kind}[{k}][1]", genotype, alphas).split()
                    assert float(s1) >= float(s2)


def test_report_lists_the_margin_of_each_late_entry(tmp_path):
    import json

    from conftest import tiny_params

    from rnas import paths
    from rnas.config import params_from_dict
    from rnas.report.decisions import decisions_markdown

    p = tiny_params(runs=("darts",))
    p["pipeline"].update(results=str(tmp_path / "results"), seeds=[0])
    params = params_from_dict(p)
    genotype, alphas = _two_node_cell()
    values = [genotype] * 6 + [{**genotype, "normal": [["sep_conv_3x3", 0], *genotype["normal"][1:]]}, genotype]
    summary = {**stability_summary([decision_digest(v) for v in values], 8), **late_changes(values, 8)}
    f = paths.search_log(params, "darts", 0)
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps({"history": [{}] * 8, **summary}))
    (f.parent / "alphas.json").write_text(json.dumps(alphas))
    paths.arch_file(params, "darts", 0).write_text(json.dumps(genotype))
    md = decisions_markdown(params)
    assert "- darts (seed 0): `normal[0][0]` (skip_connect 0.500 vs sep_conv_3x3 0.300)" in md


def test_a_cell_search_records_softmax_alpha_per_epoch():
    """The last epoch's snapshot is the final softmax(α) of ``alphas.json``; PC-DARTS adds its
    edge weights (the derivation scales by them); rows sum to 1."""
    import math

    import torch
    from conftest import tiny_params, tiny_splits

    from rnas.config import params_from_dict
    from rnas.runs import resolve_run
    from rnas.search.loop import run_search
    from rnas.search.methods import make_method

    for k in (1, 2):
        p = tiny_params()
        p["search"].update(epochs=2, batch_size=8, partial_channels=k)
        params = params_from_dict(p)
        splits = tiny_splits(n_train=32)
        ctx = {"params": params, "run": resolve_run("darts"), "info": splits.info, "seed": 0}
        result = run_search(make_method("darts"), {**ctx, "device": torch.device("cpu")}, splits, progress=False)
        final = result.extra_outputs["alphas.json"]
        assert len(result.snapshots) == 2 and result.snapshots[-1] == {
            key: value for key, value in final.items() if key != "primitives"
        }
        assert ("normal_edges" in final) == (k > 1)
        assert all(math.isclose(sum(row), 1.0, rel_tol=1e-5) for s in result.snapshots for row in s["normal"])


def test_entry_series_follows_the_entry_over_the_epochs():
    from rnas.report.decisions import entry_series

    genotype, final = _two_node_cell()
    early = {"normal": [[0.1, 0.3, 0.5, 0.1], *final["normal"][1:]]}  # sep_conv_3x3 led on edge 0 first
    alphas = {**final, "per_epoch": [early, early, {"normal": final["normal"]}]}
    # The edge's top three ops by their final weight, each over the three epochs.
    assert entry_series("normal[0][0]", genotype, alphas) == {
        "skip_connect": [0.3, 0.3, 0.5],
        "sep_conv_3x3": [0.5, 0.5, 0.3],
        "max_pool_3x3": [0.1, 0.1, 0.1],
    }
    assert list(entry_series("normal[2][1]", genotype, alphas, top=2)) == ["input 1", "input 2"]
    # An input entry draws its own input first (solid in the figure), even when it is not the strongest.
    assert list(entry_series("normal[3][1]", genotype, alphas)) == ["input 2", "input 1", "input 0"]
    assert entry_series("normal[0][0]", genotype, final) == {}  # no per_epoch: nothing to draw
    assert entry_series("stage_widths[0]", genotype, alphas) == {}


def test_decided_by_joins_the_inputs_of_one_node():
    from rnas.report.decisions import decided_by

    assert decided_by("normal[2][1]") == decided_by("normal[3][1]") == "normal node 1 inputs"
    assert decided_by("reduce[4][1]") == "reduce node 2 inputs" != decided_by("normal[4][1]")
    assert decided_by("normal[2][0]") == "normal[2][0]" != decided_by("normal[3][0]")  # ops: one edge each
    assert decided_by("stage_widths[0]") == "stage_widths[0]"


def test_late_entries_plot_draws_each_undecided_search(tmp_path, monkeypatch):
    from rnas.report.collect import RunRow, SeedResult
    from rnas.report.plots import plot_late_entries

    genotype, final = _two_node_cell()
    alphas = {**final, "per_epoch": [{"normal": final["normal"]}] * 8}
    moved = ["normal[0][0]", "normal[2][1]", "normal_concat[0]", "normal[3][1]"]  # [2][1], [3][1]: node 1's inputs
    undecided = {"decided": False, "late_changed": moved}
    rows = [
        RunRow("darts", "darts", "", results=[SeedResult(0, {}, undecided, architecture=genotype, alphas=alphas)]),
        RunRow("dsrna_cb", "dsrna", "cb", results=[SeedResult(0, {}, {"decided": True}, architecture=genotype)]),
    ]
    import matplotlib.pyplot as plt

    drawn = []
    original = plt.Axes.plot

    def spy(ax, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(plt.Axes, "plot", spy)
    path = plot_late_entries(rows, tmp_path / "late.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One line per op of the moved edge and per input of the moved node, drawn once for both of
    # its moved inputs; the output list has nothing to draw; the decided search gets no panel.
    assert drawn == [
        "normal[0][0]: skip_connect",
        "normal[0][0]: sep_conv_3x3",
        "normal[0][0]: max_pool_3x3",
        "normal[2][1], normal[3][1]: input 1",
        "normal[2][1], normal[3][1]: input 2",
        "normal[2][1], normal[3][1]: input 0",
    ]
    drawn.clear()
    assert plot_late_entries(rows[1:], tmp_path / "none.png").is_file() and drawn == []


def test_loop_counts_the_search_threads_cpu_time_across_a_resume(tmp_path):
    """``cpu_seconds`` is CPU time, not wall clock: a step that burns CPU counts, one that waits
    does not; a resume adds the CPU seconds of the process that wrote the checkpoint, and a
    checkpoint written before the key existed gives an unknown total (None), not a part."""
    import time

    import torch
    from conftest import tiny_params, tiny_splits

    from rnas.checkpoint import ResumeState
    from rnas.config import params_from_dict
    from rnas.runs import resolve_run
    from rnas.search.base import SearchMethod
    from rnas.search.loop import run_search

    burn, nap = 0.02, 0.03

    class BurnAndWait(SearchMethod):
        def step(self, batch_w, batch_a, progress):
            c0 = time.process_time()
            while time.process_time() - c0 < burn:
                pass
            time.sleep(nap)
            return {}

        def architecture(self):
            return {"op": "a"}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    p = tiny_params()
    p["search"].update(epochs=6, batch_size=8)  # 32 examples: 16 per half, 2 steps an epoch
    params = params_from_dict(p)
    splits = tiny_splits(n_train=32)
    ctx = {"params": params, "run": resolve_run("darts"), "info": splits.info, "device": torch.device("cpu"), "seed": 0}
    steps = 6 * 2
    full = run_search(BurnAndWait(), ctx, splits, progress=False)
    assert full.cpu_seconds >= steps * burn
    assert full.cpu_seconds < full.seconds - 0.5 * steps * nap  # the waits are wall clock only
    # Three epochs, then a resume that runs the other three: the total holds both processes' CPU.
    p["search"]["epochs"] = 3
    run_search(
        BurnAndWait(),
        {**ctx, "params": params_from_dict(p)},
        splits,
        resume=ResumeState(tmp_path / "s", "h"),
        progress=False,
    )
    resumed = run_search(BurnAndWait(), ctx, splits, resume=ResumeState(tmp_path / "s", "h"), progress=False)
    assert resumed.start_epoch == 3 and resumed.cpu_seconds >= steps * burn
    # A checkpoint of an older version (no "cpu_seconds"): the total is not known.
    p["search"]["epochs"] = 3
    old = ResumeState(tmp_path / "old", "h")
    run_search(BurnAndWait(), {**ctx, "params": params_from_dict(p)}, splits, resume=old, progress=False)
    state = old.load()
    del state["cpu_seconds"], state["params_hash"]
    old.save(state)
    from_old = run_search(BurnAndWait(), ctx, splits, resume=ResumeState(tmp_path / "old", "h"), progress=False)
    assert from_old.start_epoch == 3 and from_old.cpu_seconds is None


def test_decided_count_keeps_budget_selections_apart_from_searches():
    from rnas.report.decisions import _decided_count

    # 5 rows: 3 searches (2 decided) and 2 budget selections (1 decided)
    assert _decided_count(5, 3, 2, 1) == "**2 of 3 searches decided**, and 1 of 2 budget selections made from them."
    assert _decided_count(3, 2, 0, 0) == "**2 of 3 searches decided.**"
