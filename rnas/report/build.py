"""Assemble ``results/report.md`` and the self-contained ``results/report.html``.

Order: a sanity banner (a red block listing every failed check, loud on purpose, or a green
line when all passed), the results table (one row per run), robustness-vs-ε and the Pareto
front, the search (curves, cell statistics, drawings of every found cell), figures other
stages drew beside the architectures (tutor maps, contribution heat maps) and registered
extra sections (:mod:`rnas.report.sections`), the sanity checks run by run, and an appendix
with one row per seed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from rnas import paths
from rnas.config import Params
from rnas.evaluation.sanity import SANITY_CHECKS
from rnas.report.cells import COLLAPSE_SKIPS, cell_stats, collapsed, draw_genotype
from rnas.report.collect import RunRow, collect
from rnas.report.curves import write_curves
from rnas.report.document import (
    Block,
    BulletList,
    Callout,
    Cell,
    Figure,
    Heading,
    Image,
    Markdown,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from rnas.report.plots import (
    plot_certified_sweep,
    plot_cost,
    plot_eps_sweep,
    plot_late_entries,
    plot_pareto,
    plot_search_curves,
)
from rnas.report.sections import SECTIONS
from rnas.report.table import autoattack_checks_table, main_table, sanity_failures, sanity_table, seed_table

log = logging.getLogger(__name__)

NAV = [
    ("results", "Results"),
    ("search", "Search"),
    ("method-figures", "Method figures"),
    ("sanity", "Sanity checks"),
    ("appendix", "Per seed"),
]


@dataclass
class ReportOutputs:
    markdown: Path
    html: Path
    plots: list[Path] = field(default_factory=list)
    curves: list[Path] = field(default_factory=list)  # dvc plots tables
    figures: list[Path] = field(default_factory=list)  # other stages' PNGs embedded
    failures: list[str] = field(default_factory=list)  # failed sanity checks (one line each)


def _empty_cell_plot(path: Path, text: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#666666")
    ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cells_section(params: Params, rows: list[RunRow]) -> tuple[list[Block], list[Path]]:
    """Cell statistics table and one drawing per cell-space run and seed."""
    table_rows, images, written = [], [], []
    for row in rows:
        if row.reference or row.space != "cell":
            continue
        for r in row.results:
            if not isinstance(r.architecture, dict) or "normal" not in r.architecture:
                continue
            stats = cell_stats(r.architecture, r.alphas)
            own = paths.cell_plot(params, row.run, r.seed)
            draw_genotype(r.architecture, own, f"{row.run} (seed {r.seed})", stats)
            written.append(own)
            images.append(Image(own, width="50%", alt=f"cells of {row.run}, seed {r.seed}"))
            by = {s.kind: s for s in stats}
            cells = [row.run, str(r.seed)]
            for kind in ("normal", "reduce"):
                s = by[kind]
                cells += [f"{s.parameter_free}/{s.edges} ({100 * s.parameter_free_share:.0f}%)", str(s.skips)]
            for kind in ("normal", "reduce"):
                s = by[kind]
                cells.append(
                    Cell("–", css="na")
                    if s.alpha_entropy is None
                    else Cell(
                        f"{s.alpha_entropy:.2f}",
                        f"({100 * s.alpha_entropy / s.alpha_entropy_max:.0f}% of max)",
                        title=f"max ln(#ops) = {s.alpha_entropy_max:.2f} nats (uniform α)",
                    )
                )
            searched = bool((r.search or {}).get("history"))  # a random cell cannot collapse
            note = (
                Cell("⚠ collapsed", css="fail", title=f"DARTS+: ≥ {COLLAPSE_SKIPS} skip connections in the normal cell")
                if searched and collapsed(stats)
                else Cell("", css="txt")
            )
            cells.append(note)
            table_rows.append(cells)
    # every declared cell plot exists, even for a run that has no genotype (yet)
    for path in paths.report_plots(params):
        if path.name.startswith("cell_") and path not in written:
            _empty_cell_plot(path, f"{path.stem}: no architecture file")
            written.append(path)
    if not table_rows:
        return [], written
    header = [
        "run",
        "seed",
        Cell("normal: param-free", title="chosen edges whose op has no weights"),
        Cell("normal: skips"),
        Cell("reduce: param-free", title="at its stride (skip at stride 2 has weights)"),
        Cell("reduce: skips"),
        Cell("H(α) normal", title="mean entropy of softmax(α) over edges, nats"),
        Cell("H(α) reduce", title="mean entropy of softmax(α) over edges, nats"),
        "note",
    ]
    blocks: list[Block] = [
        Heading("Found cells", 3),
        Paragraph(
            "Share of parameter-free ops (pooling, identity skip, none) among the chosen edges, and the "
            "mean entropy of the final softmax(α) per edge (from `alphas.json`; 100% of max = uniform, "
            f"the search did not decide). A normal cell with ≥ {COLLAPSE_SKIPS} skip connections is "
            "flagged as collapsed after a search (the DARTS+ criterion)."
        ),
        Table(header, table_rows),
        Figure(
            images,
            caption="Dashed edges are parameter-free; c_{k-2}, c_{k-1} are the cell inputs, c_k "
            "the concatenation of the intermediate nodes.",
        ),
    ]
    return blocks, written


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _method_figures(rows: list[RunRow]) -> list[Image]:
    images = []
    for row in rows:
        for r in row.results:
            for png in r.figures:
                images.append(Image(png, f"{row.run}, seed {r.seed}: {png.stem.replace('_', ' ')}", width="50%"))
    return images


def _autoattack_checks_blocks(rows: list[RunRow]) -> list[Block]:
    """AutoAttack's own checks per AutoAttack run, and every warning spelled out."""
    table = autoattack_checks_table(rows)
    if table is None:
        return []
    warnings = [
        f"**{row.run}** seed {r.seed}, {run}: `{check}` — "
        f"{((r.eval.get('autoattack_checks_details') or {}).get(run) or {}).get(check, '')}"
        for row in rows
        for r in row.results
        for run, checks in (r.eval.get("autoattack_checks") or {}).items()
        for check, ok in checks.items()
        if not ok
    ]
    blocks: list[Block] = [
        Heading("AutoAttack's own checks", 3),
        Paragraph(
            "pyautoattack checks every run for a randomized or dynamic defense, probability outputs, too many "
            "target classes, zero gradients (APGD-T) and a Square attack that succeeds where the gradient "
            "attacks failed; it only logs them. Recorded per AutoAttack run (the protocol's and the sanity "
            "probes') in eval.json (`autoattack_checks`); any warning also fails the sanity check "
            "`autoattack_own_checks`."
        ),
        table,
    ]
    if warnings:
        blocks.append(BulletList(warnings))
    return blocks


def _settings_list(params: Params) -> list[str]:
    e = params.evaluate
    return [
        f"dataset `{params.data.dataset}`, the first {e.n_examples} test examples for every model",
        f"L∞ ε = {e.epsilon:g}, PGD step {e.pgd_step_size:g}, {e.pgd_restarts} restart(s), any iterate counts; "
        f"L2 radius {e.epsilon_l2:g} (AutoAttack-L2; C&W {e.cw_binary_search_steps} binary-search steps × "
        f"{e.cw_steps} steps from c = {e.cw_initial_const:g}; DeepFool {e.deepfool_steps} steps)",
        "ε sweep (PGD-20, step/ε fixed): " + ", ".join(f"{v:g}" for v in sorted({0.0, e.epsilon, *e.eps_sweep})),
        f"sanity: large ε {e.sanity_large_epsilon:g} (L∞) and {e.sanity_large_epsilon_l2:g} (L2), Square alone "
        f"{e.sanity_square_queries} queries on the examples the white-box attacks left, "
        f"tolerance {100 * e.sanity_tolerance:g} points, zero-gradient share ≤ {e.sanity_max_zero_grad_fraction:g}",
        f"seeds {list(params.pipeline.seeds)}",
    ]


def build_report(params: Params) -> ReportOutputs:
    """Write the plots, report.md and report.html; returns what was written."""
    rows = collect(params)
    md_path, html_path = paths.report_md(params), paths.report_html(params)
    plots = paths.plots_dir(params)
    plots.mkdir(parents=True, exist_ok=True)
    e = params.evaluate
    eps_png = plot_eps_sweep(rows, plots / "eps_sweep.png", e.epsilon)
    cert_png = plot_certified_sweep(rows, plots / "certified_sweep.png")
    pareto_png = plot_pareto(rows, plots / "pareto.png")
    search_png = plot_search_curves(rows, plots / "search_curves.png")
    late_png = plot_late_entries(rows, plots / "late_entries.png")
    cost_png = plot_cost(rows, plots / "cost.png")
    cell_blocks, cell_pngs = _cells_section(params, rows)
    curves = write_curves(params)
    failures = sanity_failures(rows)
    n_eval = sum(len(row.results) for row in rows)
    n = rows[0].n_examples if rows else e.n_examples

    blocks: list[Block] = [
        Heading(f"Robust NAS report — {params.data.dataset}", 1),
        Paragraph(
            f"{_plural(len(rows), 'run')}, {_plural(n_eval, 'evaluation')}, each on the same {n} test examples; "
            f"L∞ ε = {e.epsilon:g}, L2 radius = {e.epsilon_l2:g} (pixel units, inputs in [0, 1]).",
            css="muted",
        ),
    ]
    if failures:
        blocks.append(
            Callout(
                "danger",
                f"{len(failures)} sanity check failure(s): the affected robustness "
                "numbers may be unreliable (gradient masking or a broken evaluation)",
                failures,
            )
        )
    elif rows:
        blocks.append(Callout("ok", f"Every sanity check passed ({_plural(n_eval, 'evaluation')})."))
    else:
        blocks.append(Callout("warning", "No eval.json found yet: run the pipeline first."))

    blocks += [
        Heading("Results", 2, "results"),
        Paragraph(
            "Accuracy in % (higher is better) under each attack, measured on all examples; PGD counts an "
            "example broken if any iterate fooled the model; **worst case** counts an example robust only "
            "if every attack at the L∞ ε failed on it (the stand-alone Square of the sanity checks "
            "included), **worst case L2** likewise at the L2 radius. One seed: value and 95% Wilson "
            "interval; several seeds: mean ± std and the 95% t-interval of the mean. Best searched run per "
            "column highlighted; the teacher is a reference, not a search result."
        ),
        main_table(rows),
        Figure([Image(eps_png, alt="robust accuracy vs ε"), Image(pareto_png, alt="parameters vs accuracy")]),
        Figure(
            [Image(cert_png, alt="certified accuracy vs ε")],
            caption="Certified accuracy vs ε (log scale; `evaluate.certify_eps_sweep`, the bound of "
            "`evaluate.certify_method`): an example counts at ε when its certified radius is ≥ ε.",
        ),
        Heading("Search", 2, "search"),
        Figure([Image(search_png, alt="search curves")]),
        Figure(
            [Image(late_png, alt="what undecided searches still moved")],
            caption="Why an undecided search did not decide: for each entry of its genotype that still moved "
            "in the last quarter (the section *Did the searches decide?* lists them), the softmax(α) weights "
            "that decide it per epoch, the edge's top ops or the node's inputs; crossing lines in the shaded "
            "quarter are a near-tie the search did not break.",
        ),
        Figure(
            [Image(cost_png, alt="robust accuracy vs search seconds")],
            caption="What the search cost buys: worst-case robust accuracy against search seconds (one small "
            "point per seed, the mean ± std per run). The end-to-end cost of each method is in the "
            "section *End-to-end cost* below.",
        ),
        *cell_blocks,
    ]
    figures = _method_figures(rows)
    extra: list[Block] = []
    for section in SECTIONS.values():
        text = section(params)
        if text.strip():
            extra.append(Markdown(text))
    if figures or extra:
        blocks.append(Heading("Method figures and sections", 2, "method-figures"))
        if figures:
            blocks.append(Figure(figures))
        blocks += extra

    known = {name: check.doc for name, check in SANITY_CHECKS.items()}
    blocks += [
        Heading("Sanity checks", 2, "sanity"),
        Paragraph(
            "Recorded with every evaluation (`rnas.evaluation.sanity`); a failure means the attacks may be "
            "fooled (gradient masking) or the evaluation is broken, so the numbers above it are suspect."
        ),
        BulletList([f"`{name}`: {doc}" for name, doc in known.items()]),
        sanity_table(rows),
        *_autoattack_checks_blocks(rows),
        Heading("Appendix: every seed", 2, "appendix"),
        seed_table(rows),
        Heading("Settings", 3),
        BulletList(_settings_list(params)),
    ]

    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(to_markdown(blocks, md_path.parent))
    anchors = {b.anchor for b in blocks if isinstance(b, Heading)}
    html_path.write_text(to_html(blocks, f"rnas report — {params.data.dataset}", [a for a in NAV if a[0] in anchors]))
    log.info("report -> %s, %s (%d plots)", md_path, html_path, 6 + len(cell_pngs))
    return ReportOutputs(
        md_path,
        html_path,
        [eps_png, cert_png, pareto_png, search_png, late_png, cost_png, *cell_pngs],
        curves,
        [im.path for im in figures],
        failures,
    )
