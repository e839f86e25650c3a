"""Extra report sections other modules contribute, as Markdown
(report.md takes it as written; report.html renders it with markdown-it-py: CommonMark with pipe
tables, raw HTML escaped).

A section is a function ``(params) -> str`` returning its Markdown, or ``""`` when it has
nothing to show (e.g. its runs are not in ``pipeline.runs``). To add one, register it here;
it appears in both report.md and report.html, after the built-in sections.
"""

from __future__ import annotations

from collections.abc import Callable

from rnas.config import Params
from rnas.report.alternatives import alternatives_markdown
from rnas.report.claims import claims_markdown
from rnas.report.cost import cost_markdown
from rnas.report.decisions import decisions_markdown
from rnas.report.rnas_noise import noise_vs_adversarial_markdown

SECTIONS: dict[str, Callable[[Params], str]] = {
    "claims": claims_markdown,
    "decisions": decisions_markdown,
    "alternatives": alternatives_markdown,
    "cost": cost_markdown,
    "rnas_noise": noise_vs_adversarial_markdown,
}
