"""A tiny document model rendered twice: GitHub Markdown (``report.md``) and one
self-contained HTML file (``report.html``, CSS inline, images as base64 data URIs).

Blocks: :class:`Heading`, :class:`Paragraph`, :class:`BulletList`, :class:`Table` (cells may
carry a second, smaller line and a CSS class), :class:`Figure` (one or more images side by
side), :class:`Callout` (a coloured box: ``danger``, ``warning``, ``ok``) and :class:`Details`
(collapsible in HTML). Inline markup in texts: ``code`` and **bold**, nothing else.
:func:`markdown_blocks` reads that same Markdown subset (headings, paragraphs, bullet lists,
pipe tables), so sections other modules write as Markdown render in both outputs.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path


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


Block = Heading | Paragraph | BulletList | Table | Figure | Callout | Details

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
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------------------------
# HTML

_CSS = """
:root { --fg:#1f2328; --muted:#656d76; --line:#d0d7de; --head:#f6f8fa; --best:#dafbe1; --bestfg:#116329;
        --fail:#ffebe9; --failfg:#cf222e; --warn:#fff8c5; --ok:#dafbe1; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       max-width: 1400px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
p.muted, .muted { color: var(--muted); }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: var(--head); padding: 1px 4px;
       border-radius: 4px; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 4px 7px; vertical-align: top; }
table.sanity th { white-space: normal; max-width: 110px; font-size: 12px; }
table.sanity td { text-align: center; }
table.sanity td:first-child { text-align: left; }
th { background: var(--head); font-weight: 600; position: sticky; top: 0; white-space: nowrap; }
td { text-align: right; white-space: nowrap; }
td:first-child, td.txt { text-align: left; }
tr:nth-child(even) td { background: #fbfcfd; }
td.best { background: var(--best); color: var(--bestfg); font-weight: 600; }
td.fail, span.fail { color: var(--failfg); font-weight: 700; }
td.fail { background: var(--fail); }
td.pass { color: var(--bestfg); }
td.na { color: var(--muted); }
td.ref { font-style: italic; color: var(--muted); }
td small { display: block; color: var(--muted); font-size: 11px; font-weight: 400; }
caption { caption-side: top; text-align: left; color: var(--muted); padding-bottom: 4px; }
.callout { border-radius: 6px; padding: 12px 16px; margin: 16px 0; border: 1px solid; }
.callout .title { font-weight: 700; font-size: 15px; }
.callout ul { margin: 6px 0 0; padding-left: 20px; }
.callout.danger { background: var(--fail); border-color: #ff8182; color: #82071e; }
.callout.warning { background: var(--warn); border-color: #d4a72c; }
.callout.ok { background: var(--ok); border-color: #4ac26b; color: #116329; }
figure { margin: 12px 0 20px; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.row .img { flex: 1 1 360px; max-width: 100%; }
.row .img img { width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; background: #fff; }
.row .img span { display: block; font-size: 12px; color: var(--muted); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
details { margin: 8px 0 16px; }
summary { cursor: pointer; font-weight: 600; }
nav { margin: 10px 0 0; font-size: 13px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
"""


def _inline(text: str) -> str:
    """Escape, then ``code`` and **bold**."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for p in parts:
        if p.startswith("`") and p.endswith("`") and len(p) > 1:
            out.append(f"<code>{html.escape(p[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(p)))
    return "".join(out)


def _data_uri(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _html_cell(c: str | Cell, tag: str) -> str:
    c = _cell(c)
    attrs = ""
    if c.css:
        attrs += f' class="{html.escape(c.css)}"'
    if c.title:
        attrs += f' title="{html.escape(c.title)}"'
    body = _inline(c.text)
    if c.sub:
        body += f"<small>{_inline(c.sub)}</small>"
    return f"<{tag}{attrs}>{body}</{tag}>"


def _html_blocks(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            out.append(f"<h{b.level}{anchor}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            css = f' class="{b.css}"' if b.css else ""
            out.append(f"<p{css}>{_inline(b.text)}</p>")
        elif isinstance(b, BulletList):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            css = f' class="{b.css}"' if b.css else ""
            rows = ["<tr>" + "".join(_html_cell(h, "th") for h in b.header) + "</tr>"]
            rows += ["<tr>" + "".join(_html_cell(c, "td") for c in row) + "</tr>" for row in b.rows]
            caption = f"<caption>{_inline(b.caption)}</caption>" if b.caption else ""
            out.append(
                f'<div class="table-wrap"><table{css}>{caption}<thead>{rows[0]}</thead>'
                f"<tbody>{''.join(rows[1:])}</tbody></table></div>"
            )
        elif isinstance(b, Figure):
            items = []
            for im in b.images:
                style = f' style="flex: 0 1 calc({im.width} - 6px); min-width: 360px"' if im.width else ""
                label = f"<span>{_inline(im.caption)}</span>" if im.caption else ""
                alt = html.escape(im.caption or im.alt or "")
                items.append(f'<div class="img"{style}><img src="{_data_uri(im.path)}" alt="{alt}">{label}</div>')
            caption = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
            out.append(f'<figure><div class="row">{"".join(items)}</div>{caption}</figure>')
        elif isinstance(b, Callout):
            items = "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>" if b.items else ""
            out.append(
                f'<div class="callout {html.escape(b.kind)}"><div class="title">'
                f"{_ICON.get(b.kind, '')} {_inline(b.title)}</div>{items}</div>"
            )
        elif isinstance(b, Details):
            out.append(f"<details><summary>{_inline(b.summary)}</summary>{''.join(_html_blocks(b.blocks))}</details>")
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    return out


def to_html(blocks: list[Block], title: str, nav: list[tuple[str, str]] | None = None) -> str:
    """One self-contained HTML page (no external CSS, scripts or images)."""
    links = ""
    if nav:
        links = "<nav>" + "".join(f'<a href="#{html.escape(a)}">{html.escape(t)}</a>' for a, t in nav) + "</nav>"
    body = "\n".join(_html_blocks(blocks))
    if nav and body.startswith("<h1"):
        first, rest = body.split("\n", 1) if "\n" in body else (body, "")
        body = f"{first}\n{links}\n{rest}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Reading the Markdown subset back (sections written by other modules)

_TABLE_SEP = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$")


def _split_row(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|"):
        line = line[:-1]
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)]


def markdown_blocks(text: str) -> list[Block]:
    """Blocks of a Markdown text in the subset this module writes: ``#`` headings, paragraphs,
    ``-`` bullet lists and pipe tables (first row the header, then a ``|---|`` line)."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    para: list[str] = []

    def flush() -> None:
        if para:
            blocks.append(Paragraph(" ".join(para)))
            para.clear()

    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            flush()
            i += 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            flush()
            blocks.append(Heading(m[2].strip(), len(m[1])))
            i += 1
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _TABLE_SEP.match(lines[i + 1].strip()):
            flush()
            header = _split_row(line)
            i += 2
            rows = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            blocks.append(Table(header, rows))
        elif re.match(r"^\s*[-*]\s+", line):
            flush()
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                items.append(re.sub(r"^\s*[-*]\s+", "", lines[i]).strip())
                i += 1
            blocks.append(BulletList(items))
        else:
            para.append(line.strip())
            i += 1
    flush()
    return blocks
