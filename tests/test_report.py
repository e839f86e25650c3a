"""The report: tables from a hand-made results tree (every column, intervals, loud sanity
failures), plots and cell drawings, the self-contained HTML (opened in headless Chromium for a
screenshot when a chromium binary exists), the dvc plot tables, and the small pieces."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from conftest import require_or_skip

from rnas import paths
from rnas.config import load_params
from rnas.report.build import build_report
from rnas.report.cells import cell_stats, collapsed, entropy
from rnas.report.collect import collect
from rnas.report.curves import curve_specs, dvc_plots
from rnas.report.document import Details, Markdown, Paragraph, Table, to_html, to_markdown
from rnas.report.plots import pareto_front
from rnas.report.table import main_table, sanity_failures, seed_interval, wilson_interval

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CHECKS = (
    "eps0_equals_clean",
    "monotone_in_eps",
    "large_eps_reaches_chance",
    "large_eps_l2_reaches_chance",
    "pgd_not_weaker_than_fgsm",
    "more_pgd_steps_not_weaker",
    "square_not_stronger_than_whitebox",
    "nonzero_input_gradients",
    "outputs_are_logits",
    "autoattack_own_checks",
)
GENOTYPE = {
    "normal": [
        ["sep_conv_3x3", 0],
        ["skip_connect", 1],
        ["skip_connect", 0],
        ["dil_conv_3x3", 2],
        ["avg_pool_3x3", 1],
        ["sep_conv_5x5", 3],
        ["max_pool_3x3", 0],
        ["skip_connect", 4],
    ],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [
        ["max_pool_3x3", 0],
        ["skip_connect", 1],
        ["sep_conv_3x3", 0],
        ["skip_connect", 2],
        ["dil_conv_5x5", 1],
        ["avg_pool_3x3", 3],
        ["sep_conv_3x3", 4],
        ["skip_connect", 0],
    ],
    "reduce_concat": [2, 3, 4, 5],
}


def _params(tmp_path: Path, seeds=(0, 1)):
    text = (ROOT / "params.yaml").read_text()
    text = re.sub(r"(?m)^  results: .*$", f"  results: {tmp_path / 'results'}", text)
    text = re.sub(r"(?m)^  seeds: .*$", f"  seeds: {list(seeds)}", text)
    text = re.sub(r"(?m)^  runs: .*$", "  runs: [darts, random]", text)
    text = re.sub(r"(?m)^  enabled: true", "  enabled: false", text)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return load_params(path)


AA_CHECKS = ("randomized", "range_output", "dynamic", "n_classes", "zero_gradients", "square_sr")


def _eval(
    clean: float,
    robust: float,
    failed: tuple[str, ...] = (),
    certified: float | None = None,
    aa_failed: tuple[str, ...] = (),
) -> dict:
    ev = {
        "clean_acc": clean,
        "fgsm_acc": robust + 0.06,
        "pgd20_acc": robust + 0.03,
        "pgd100_acc": robust + 0.02,
        "autoattack_acc": robust,
        "robust_acc": robust,
        "autoattack_l2_acc": robust + 0.04,
        "cw_acc": robust + 0.05,
        "deepfool_acc": robust + 0.01,
        "robust_acc_l2": robust + 0.035,
        "autoattack_checks": {
            "autoattack": {c: c not in aa_failed for c in AA_CHECKS},
            "sanity/square": {c: True for c in AA_CHECKS[:4]},
        },
        "autoattack_checks_details": {
            "autoattack": {
                c: ("Square Attack has decreased the robust accuracy of 2.00%" if c in aa_failed else "no warning")
                for c in AA_CHECKS
            },
            "sanity/square": {c: "no warning" for c in AA_CHECKS[:4]},
        },
        "eps_sweep": {"0.0": clean, "0.05": (clean + robust) / 2, "0.1": robust + 0.03, "0.3": 0.0},
        "epsilon": 0.1,
        "epsilon_l2": 0.5,
        "params": 28354,
        "macs": 324736,
        "n_examples": 200,
        "attack_seconds": {"fgsm": 0.1},
        "eval_seconds": 42.0,
        "device": "cpu",
        "device_name": "CPU (x86_64, 1 threads)",
        "sanity": {c: c not in failed for c in CHECKS},
        "sanity_details": {c: ("Square 30.0% vs best white-box PGD20 60.0%" if c in failed else "ok") for c in CHECKS},
    }
    if certified is not None:
        ev["certified_acc"] = certified
    return ev


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _results(params, failed_random=("square_not_stronger_than_whitebox",)) -> None:
    """darts (2 seeds, searched, alphas, a tutor-map-like PNG), random (2 seeds, one failed
    sanity check), the teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for seed in params.pipeline.seeds:
        for run, clean, robust in (("darts", 0.98, 0.80 + 0.02 * seed), ("random", 0.95, 0.70)):
            _write(
                paths.eval_file(params, run, seed),
                _eval(clean, robust, failed_random if run == "random" and seed == 0 else ()),
            )
            _write(paths.arch_file(params, run, seed), GENOTYPE)
            history = (
                []
                if run == "random"
                else [
                    {
                        "weight_loss": 1.0 / (e + 1),
                        "val_acc": 0.5 + 0.1 * e,
                        "alpha_entropy_normal": 2.07 - 0.1 * e,
                        "alpha_entropy_reduce": 2.07 - 0.05 * e,
                        "seconds": 10.0 * (e + 1),
                    }
                    for e in range(4)
                ]
            )
            _write(
                paths.search_log(params, run, seed),
                {"search_seconds": 0.0 if run == "random" else 40.0, "history": history},
            )
            _write(
                paths.train_log(params, run, seed),
                {
                    "seconds": 60.0,
                    "history": [{"val_clean_acc": 0.9, "val_robust_acc": 0.5 + 0.05 * e} for e in range(3)],
                },
            )
        alphas = {"primitives": ["a"] * 8, "normal": [[0.125] * 8] * 14, "reduce": [[0.9] + [0.1 / 7] * 7] * 14}
        _write(paths.arch_file(params, "darts", seed).parent / "alphas.json", alphas)
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.imshow([[0, 1], [1, 0]])
        fig.savefig(paths.arch_file(params, "darts", seed).parent / "tutor_map.png")
        plt.close(fig)
    _write(paths.eval_file(params, paths.TEACHER, 0), _eval(0.99, 0.85, certified=0.4))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    params = _params(tmp)
    _results(params)
    return params, build_report(params)


def test_report_tables_every_run_every_column(report):
    params, out = report
    md = out.markdown.read_text()
    # one row per run, teacher last; every accuracy column, certified (the teacher has it), costs
    header = next(line for line in md.splitlines() if line.startswith("| run | seeds"))
    for label in (
        "clean",
        "FGSM",
        "PGD-20",
        "PGD-100",
        "AutoAttack",
        "worst case",
        "AutoAttack-L2",
        "C&W-L2",
        "DeepFool-L2",
        "worst case L2",
        "certified",
        "params",
        "MACs",
        "search",
        "wall",
        "device",
        "sanity",
    ):
        assert f"| {label} |" in header, label
    main = [
        line
        for line in md.splitlines()
        if re.match(
            r"\| (darts \| 2 \| .*±|random \| 2 \| .*±|teacher \(reference\) — teacher \(small_cnn\) \| 1 \|)", line
        )
    ]
    assert [r.split("|")[1].strip() for r in main] == ["darts", "random", "teacher (reference) — teacher (small_cnn)"]
    darts = main[0]
    # two seeds: mean ± std and a t-interval; robust 80% and 82%
    assert "**81.0 ± 1.4** [" in darts  # best searched run in its column, in bold
    assert "28.4k" in darts and "324.7k" in darts and "40 s" in darts and "2.4 min" in darts
    assert "✓ 20/20" in darts
    # per-seed appendix: Wilson intervals over 200 examples
    lo, hi = wilson_interval(0.80, 200)
    assert "| darts | 0 | 98.0 [" in md and f"80.0 [{100 * lo:.1f}–{100 * hi:.1f}]" in md
    assert md.count("| darts | 0 |") == 5  # cell-statistics, sanity, 2 AutoAttack-check and appendix rows


def test_failed_sanity_check_is_loud(report):
    params, out = report
    md, html = out.markdown.read_text(), out.html.read_text()
    assert out.failures == [
        "**random** seed 0: `square_not_stronger_than_whitebox` failed — Square 30.0% vs best white-box PGD20 60.0%"
    ]
    top = md.split("## Results")[0]
    assert "✗ 1 sanity check failure(s)" in top and "square_not_stronger_than_whitebox" in top
    assert "✗ 1 failed" in md  # the run's sanity cell
    assert html.index('class="callout danger"') < html.index('id="results"')
    assert re.search(r'<td class="fail" title="[^"]*square_not_stronger[^"]*">✗ 1 failed</td>', html)


def test_autoattack_own_checks_are_shown(report, tmp_path):
    _, out = report
    md = out.markdown.read_text()
    section = md.split("### AutoAttack's own checks")[1].split("## Appendix")[0]
    # one row per run, seed and AutoAttack run; the Square probe's run did not do APGD-T / Square
    assert "| darts | 0 | sanity/square | ✓ | ✓ | ✓ | ✓ | n/a | n/a |" in section
    assert "| darts | 1 | autoattack | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ |" in section
    # a warning is a ✗ in its cell, spelled out below the table, and a failed sanity check
    params = _params(tmp_path, seeds=(0,))
    _results(params, failed_random=())
    ev = _eval(0.95, 0.7, failed=("autoattack_own_checks",), aa_failed=("square_sr",))
    _write(paths.eval_file(params, "random", 0), ev)
    out = build_report(params)
    md = out.markdown.read_text()
    assert "| random | 0 | autoattack | ✓ | ✓ | ✓ | ✓ | ✓ | ✗ |" in md
    assert (
        "**random** seed 0, autoattack: `square_sr` — Square Attack has decreased the robust accuracy of 2.00%"
    ) in md
    assert any("autoattack_own_checks" in line for line in out.failures)
    assert re.search(r'<td class="fail" title="Square Attack has decreased[^"]*">✗</td>', out.html.read_text())


def test_all_passing_report_says_so(tmp_path):
    params = _params(tmp_path, seeds=(0,))
    _results(params, failed_random=())
    out = build_report(params)
    md = out.markdown.read_text()
    assert out.failures == [] and "✓ Every sanity check passed (3 evaluations)." in md
    assert "callout danger" not in out.html.read_text()
    # an eval.json without sanity results is a failure too, not a silent pass
    ev = json.loads(paths.eval_file(params, "darts", 0).read_text())
    del ev["sanity"]
    _write(paths.eval_file(params, "darts", 0), ev)
    rows = collect(params)
    assert sanity_failures(rows) == ["**darts** seed 0: no sanity checks recorded in eval.json"]
    assert main_table(rows).rows[0][-1].text == "✗ not checked"


def test_plots_cells_and_figures(report):
    params, out = report
    expected = paths.report_plots(params)
    assert [p.name for p in expected] == [
        "eps_sweep.png",
        "certified_sweep.png",
        "pareto.png",
        "search_curves.png",
        "late_entries.png",
        "cost.png",
        "cell_darts_seed0.png",
        "cell_darts_seed1.png",
        "cell_random_seed0.png",
        "cell_random_seed1.png",
    ]
    assert sorted(out.plots) == sorted(expected)
    for png in expected:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
    assert {p.name for p in out.figures} == {"tutor_map.png"} and len(out.figures) == 2
    md = out.markdown.read_text()
    assert "![](plots/pareto.png)" in md or "(plots/pareto.png)" in md
    assert "darts/seed0/tutor_map.png" in md
    # cell statistics: the genotype has 3 skips in the normal cell -> collapsed (DARTS+)
    assert "| darts | 0 | 5/8 (62%) | 3 | 3/8 (38%) | 3 | 2.08 (100% of max) | 0.52 (25% of max) | ⚠ collapsed |" in md


def test_html_is_self_contained(report):
    _, out = report
    html = out.html.read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert len(images) == 6 + 4 + 2  # ε/certified ε/Pareto/search/late entries/cost, 4 cells, 2 method figures
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing loaded from elsewhere
    assert "<style>" in html and 'href="#sanity"' in html
    _assert_well_formed(html)


class _Elements(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.errors.append(f"</{tag}> while {self.open[-3:]} open")


def _assert_well_formed(html: str) -> None:
    """Every element closed, in order (no void element left open, no stray end tag)."""
    parser = _Elements()
    parser.feed(html)
    parser.close()
    assert not parser.errors and not parser.open, (parser.errors[:3], parser.open)


def test_html_opens_in_headless_chromium(report, tmp_path):
    binary = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome") if shutil.which(b)), None
    )
    require_or_skip(binary is not None, "no chromium binary on PATH (Debian: apt-get install chromium)")
    _, out = report
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1400,2400",
            out.html.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 2400)
        colors = im.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colors is None or len(colors) > 200  # a rendered page, not a blank one
        red = sum(n for n, (r, g, b) in (colors or []) if r > 200 and g < 230 and b < 230)
        assert colors is None or red > 1000  # the red warning block is drawn


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), (None, pytest.skip.Exception)])
def test_missing_chromium_fails_under_ci_and_skips_locally(report, tmp_path, monkeypatch, ci, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no chromium binary on PATH"):
        test_html_opens_in_headless_chromium(report, tmp_path)


def test_certified_column_only_when_recorded(tmp_path):
    params = _params(tmp_path, seeds=(0,))
    _results(params)
    paths.eval_file(params, paths.TEACHER, 0).unlink()  # the only eval.json with certified_acc
    table = main_table(collect(params))
    labels = [getattr(h, "text", h) for h in table.header]
    assert "certified" not in labels and "AutoAttack" in labels


def test_intervals():
    lo, hi = wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(1.0, 50)[1] == 1.0 and wilson_interval(0.0, 50)[0] == 0.0
    lo, hi = seed_interval([0.80, 0.82])  # t_{0.975,1} = 12.706
    assert hi - lo == pytest.approx(2 * 12.706 * 0.01414 / math.sqrt(2), abs=1e-3)


def test_pareto_front_and_cell_stats():
    pts = [(100, 0.5), (50, 0.4), (200, 0.45), (300, 0.7), (50, 0.3)]
    assert pareto_front(pts) == [1, 0, 3]
    stats = cell_stats(GENOTYPE, {"normal": [[1.0] + [0.0] * 7] * 14, "reduce": [[1 / 8] * 8] * 14})
    normal, reduce = stats
    assert (normal.parameter_free, normal.skips) == (5, 3)  # 3 identity skips + 2 pools
    # reduce: skip from input 1 and 0 (stride 2) has weights; skip from node 2 is free; + 2 pools
    assert (reduce.parameter_free, reduce.skips) == (3, 3)
    assert normal.alpha_entropy == 0.0 and reduce.alpha_entropy == pytest.approx(math.log(8))
    one_skip = [["skip_connect", 1]] + [["sep_conv_3x3", 0]] * 7
    assert collapsed(stats) and not collapsed(cell_stats({**GENOTYPE, "normal": one_skip}))
    assert entropy([0.5, 0.5]) == pytest.approx(math.log(2))


def test_html_template_escapes_and_renders_markdown(tmp_path):
    section = (
        "## A section\n\nSome `code` and **bold** text\nover two lines.\n\n"
        "| run | s |\n|---|---|\n| rnas | 12 |\n| rnas_adv | 30 |\n\n- one\n- two\n"
    )
    blocks = [Paragraph("a <b> `x<y>` **z**"), Table(["h"], [["1|2"]]), Markdown(section)]
    md = to_markdown(blocks, tmp_path)
    assert "| 1\\|2 |" in md and section.strip() in md  # a Markdown section goes into report.md as it is
    html = to_html(blocks, "t <&>")
    assert "<title>t &lt;&amp;&gt;</title>" in html
    assert "a &lt;b&gt; <code>x&lt;y&gt;</code> <strong>z</strong>" in html
    assert "<td>1|2</td>" in html
    assert "<h2>A section</h2>" in html and "Some <code>code</code> and <strong>bold</strong> text" in html
    assert '<div class="table-wrap"><table>' in html and "<td>rnas_adv</td>" in html and "<li>two</li>" in html
    # raw HTML is escaped; links, autolinks and images stay text, so nothing is loaded from elsewhere
    html = to_html([Markdown("<script>x</script>\n\n[a](https://x.org) ![i](y.png) <https://x.org>")], "t")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert not re.search(r'(src|href)="', html)
    html = to_html([Details("more **m**", [Paragraph("x"), Details("inner", [Markdown("- a")])])], "t")
    assert "<details><summary>more <strong>m</strong></summary>\n<p>x</p>\n<details><summary>inner</summary>" in html
    _assert_well_formed(html)
    with pytest.raises(TypeError, match="unknown block str"):
        to_html([Details("d", ["text"])], "t")


def test_templates_are_package_data():
    """A non-editable install ships every template (pyproject's package-data globs match them)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = ROOT / "rnas" / "report" / "templates"
    files = [p.name for p in package.iterdir() if p.is_file() and p.suffix != ".py"]
    assert files and all(any(fnmatch(f, g) for g in config["rnas.report.templates"]) for f in files)


def test_dvc_curves_match_their_declaration(report):
    params, out = report
    specs = {s.file: s for s in curve_specs(params)}
    assert set(specs) == {p.name for p in out.curves}
    assert specs["search_val_acc.json"].series == ("darts/seed0", "darts/seed1")  # random has no search loop
    for path in out.curves:
        records = json.loads(path.read_text())
        spec = specs[path.name]
        assert records and all(set(r) == {spec.x, *spec.series} for r in records)  # dvc needs equal keys
    sweep = json.loads((paths.plots_dir(params) / "eps_sweep.json").read_text())
    assert [r["epsilon"] for r in sweep] == [0.0, 0.05, 0.1, 0.3] and sweep[0]["teacher"] == 0.99
    entries = dvc_plots(params)
    declared = {next(iter(e)) for e in entries if isinstance(e, dict)}
    assert declared == {f.removesuffix(".json") for f in specs}
    assert {e for e in entries if isinstance(e, str)} == {str(p) for p in paths.report_plots(params)}
    # the dataclass knobs the report shows exist in the evaluate config
    assert {"sanity_large_epsilon", "sanity_square_queries"} <= set(type(params.evaluate).model_fields)


def test_the_torch_free_list_of_loop_free_methods_is_the_method_classes():
    """The curve files (read while Snakemake parses the Snakefile) take the methods without a search
    loop from rnas.runs, without importing the methods; it must say what the classes say."""
    from rnas.runs import SEARCH_LOOP_FREE_METHODS
    from rnas.search.methods import METHODS

    assert SEARCH_LOOP_FREE_METHODS == {name for name, cls in METHODS.items() if not cls.uses_search_loop}
    assert SEARCH_LOOP_FREE_METHODS  # random


def test_parsing_the_snakefile_does_not_import_torch(tmp_path):
    """Every Snakemake invocation (and every remote job's) parses the Snakefile, and `rnas dvc-yaml`
    renders the same DAG: importing torch there cost 3-4 s each. A dry run in this process, then
    whether torch was imported."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    code = (
        "import sys\n"
        "from snakemake.cli import main\n"
        "from rnas import dag\n"
        "from rnas.config import load_params\n"
        f"sys.argv = ['snakemake', '--snakefile', {str(ROOT / 'Snakefile')!r}, '-n', '-q']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as end:\n"
        "    assert not end.code, end.code\n"
        "dag.render_dvc_yaml(load_params('params.yaml'), root=dag.Path('.'))\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, RNAS_FORKSERVER="off", GIT_PYTHON_REFRESH="quiet")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "torch imported: False"


def test_best_is_the_highest_passing_mean_and_none_for_a_tie():
    from rnas.report.collect import RunRow, SeedResult
    from rnas.report.table import _best

    def row(run, acc, ok=True, reference=False):
        return RunRow(
            run, run, "", reference=reference, results=[SeedResult(0, {"autoattack_acc": acc, "sanity": {"check": ok}})]
        )

    assert _best([row("a", 0.4), row("b", 0.5), row("t", 0.9, reference=True)], "autoattack_acc") == 0.5
    assert _best([row("a", 0.4), row("b", 0.9, ok=False)], "autoattack_acc") == 0.4  # masked: never best
    assert _best([row("a", 0.0), row("b", 0.0)], "autoattack_acc") is None  # all equal: no best
    assert _best([row("a", 0.3)], "autoattack_acc") is None  # one searched run: nothing to compare
