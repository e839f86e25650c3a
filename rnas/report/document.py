"""The report's content as a list of blocks, rendered twice: GitHub Markdown (``report.md``,
:func:`to_markdown`) and one self-contained HTML page (``report.html``, :func:`to_html`: the
Jinja2 template ``templates/report.html.j2``, autoescaped, CSS inline, images as base64 data URIs).

Blocks: :class:`Heading`, :class:`Paragraph`, :class:`BulletList`, :class:`Table` (cells may
carry a second, smaller line and a CSS class), :class:`Figure` (one or more images side by
side), :class:`Callout` (a coloured box: ``danger``, ``warning``, ``ok``), :class:`Details`
(collapsible in HTML) and :class:`Markdown` (a section another module wrote as Markdown,
:mod:`rnas.report.sections`). Inline markup in texts: ``code``, **bold** and *emphasis*. The
HTML renders Markdown, inline or a whole section, with markdown-it-py (CommonMark and pipe
tables, as GitHub shows report.md), raw HTML escaped and links and images left as text, so
nothing in the page is loaded from elsewhere.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jinja2
import markupsafe
from markdown_it import MarkdownIt

from rnas.report import templates


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Paragraph:
    text: str
    css: str | None = None  # e.g. "muted"


@dataclass
class BulletList:
    items: list[str]


@dataclass
class Cell:
    text: str
    sub: str | None = None  # second line (an interval), smaller
    css: str | None = None  # "best", "pass", "fail", "na", "num", "ref"
    title: str | None = None  # tooltip (HTML only)


@dataclass
class Table:
    header: list[str | Cell]
    rows: list[list[str | Cell]]
    caption: str | None = None
    css: str | None = None


@dataclass
class Image:
    path: Path
    caption: str = ""  # shown under the image (HTML) and as alt text
    width: str | None = None  # CSS flex basis in HTML, e.g. "48%"
    alt: str | None = None  # alt text when there is no caption


@dataclass
class Figure:
    images: list[Image]
    caption: str | None = None


@dataclass
class Callout:
    kind: str  # "danger" | "warning" | "ok"
    title: str
    items: list[str] = field(default_factory=list)


@dataclass
class Details:
    summary: str
    blocks: list = field(default_factory=list)


@dataclass
class Markdown:
    """Markdown another module wrote (headings, paragraphs, lists, pipe tables): copied into
    report.md as it is, rendered to HTML by markdown-it-py."""

    text: str


Block = Heading | Paragraph | BulletList | Table | Figure | Callout | Details | Markdown

_ICON = {"danger": "✗", "warning": "⚠", "ok": "✓"}


# --------------------------------------------------------------------------------------------
# Markdown


def _cell(c: str | Cell) -> Cell:
    return c if isinstance(c, Cell) else Cell(str(c))


def _md_cell(c: str | Cell) -> str:
    c = _cell(c)
    text = f"**{c.text}**" if c.css == "best" and c.text not in ("", "–") else c.text
    if c.sub:
        text += f" {c.sub}" if c.sub[:1] in "[(" else f" — {c.sub}"
    return text.replace("|", "\\|").replace("\n", " ")


def _rel(path: Path, base: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def to_markdown(blocks: list[Block], base_dir: Path) -> str:
    """GitHub-flavoured Markdown; image paths relative to ``base_dir`` (the .md file's folder)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Paragraph):
            out += [b.text, ""]
        elif isinstance(b, BulletList):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [f"*{b.caption}*", ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            out.append("|" + "---|" * len(b.header))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            out.append(" ".join(f"![{im.caption or im.alt or ''}]({_rel(im.path, base_dir)})" for im in b.images))
            out += ["", f"*{b.caption}*", ""] if b.caption else [""]
        elif isinstance(b, Callout):
            out.append(f"> **{_ICON.get(b.kind, '')} {b.title}**")
            if b.items:
                out.append(">")
                out += [f"> - {item}" for item in b.items]
            out.append("")
        elif isinstance(b, Details):
            out += [f"**{b.summary}**", "", to_markdown(b.blocks, base_dir)]
        elif isinstance(b, Markdown):
            out += [b.text.strip("\n"), ""]
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# HTML: the Jinja2 template

TEMPLATE = "report.html.j2"
_TESTS = {
    "heading": Heading,
    "paragraph": Paragraph,
    "bullet_list": BulletList,
    "table": Table,
    "figure": Figure,
    "callout": Callout,
    "details": Details,
    "markdown": Markdown,
}


@cache
def _markdown_it() -> MarkdownIt:
    """CommonMark with pipe tables; raw HTML escaped, links, autolinks and images left as text."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["link", "image", "autolink"])
    md.add_render_rule("table_open", lambda *_: '<div class="table-wrap"><table>\n')
    md.add_render_rule("table_close", lambda *_: "</table></div>\n")
    return md


def _inline(text: str) -> markupsafe.Markup:
    """One line of text with its inline Markdown (``code``, **bold**, *emphasis*) as HTML."""
    return markupsafe.Markup(_markdown_it().renderInline(str(text)))


def _markdown(text: str) -> markupsafe.Markup:
    return markupsafe.Markup(_markdown_it().render(text))


def _data_uri(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


@cache
def environment() -> jinja2.Environment:
    """The Jinja2 environment of the report templates (package data of :mod:`rnas.report.templates`)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(templates.__name__, ""),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(inline=_inline, markdown=_markdown, data_uri=_data_uri, cell=_cell)
    env.globals["icons"] = _ICON
    env.tests.update({name: (lambda b, cls=cls: isinstance(b, cls)) for name, cls in _TESTS.items()})
    return env


def _check(blocks: list[Block]) -> None:
    for b in blocks:
        if not isinstance(b, tuple(_TESTS.values())):
            raise TypeError(f"unknown block {type(b).__name__}")
        if isinstance(b, Details):
            _check(b.blocks)


def to_html(blocks: list[Block], title: str, nav: list[tuple[str, str]] | None = None) -> str:
    """One self-contained HTML page (no external CSS, scripts or images); ``nav`` (anchor, text)
    links follow a first level-1 heading."""
    _check(blocks)
    return environment().get_template(TEMPLATE).render(blocks=blocks, title=title, nav=nav or [])
