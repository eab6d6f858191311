"""Static HTML pages that show a run's (or the demo's) pictures with a line of explanation each.

A page is a list of sections, each a heading, a line of explanation, and a picture and/or a
table. With ``embed=True`` every picture is inlined as a data URL, so the page is one file that
can be mailed or attached to an issue; otherwise pictures are referenced relative to the page.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from vaelab.fileio import write_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .lead { color: #555; margin-top: 0; }
nav { margin: 0.6em 0 1.2em; } nav a { margin-right: 1.2em; }
section { margin: 2.2em 0; } h2 { font-size: 1.2em; margin-bottom: 0.3em; }
section p { margin-top: 0; color: #333; } img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0 1em; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f4f4f4; text-align: left; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
details summary { cursor: pointer; color: #444; }
footer { color: #777; font-size: 0.9em; margin-top: 3em; }
"""


@dataclass
class Table:
    """A table: header cells and rows of cells (text; the first column left, the others right)."""

    header: list[str]
    rows: list[list[str]]
    collapsed: str | None = None  # the summary line of a <details> that hides a long table


@dataclass
class Section:
    """One part of a report: a heading, a one-line explanation, and an image (a path relative to
    the page) and/or a table."""

    title: str
    explanation: str
    image: str | None = None
    table: Table | None = None
    extra_images: list[str] = field(default_factory=list)


def write_report(
    path: str | Path,
    title: str,
    lead: str,
    sections: list[Section],
    table: tuple[list[str], list[list[str]]] | Table | None = None,
    footer: str = "",
    links: list[tuple[str, str]] | None = None,
    embed: bool = False,
    image_dir: str | Path | None = None,
) -> Path:
    """Write an HTML page atomically: `links` are (text, href) pairs under the lead; `embed`
    inlines every image (read from `image_dir`, default the page's folder) so the page is
    self-contained."""
    esc = html.escape
    page_dir = Path(image_dir) if image_dir is not None else Path(path).parent
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class='lead'>{esc(lead)}</p>",
    ]
    if links:
        parts.append(
            "<nav>" + "".join(f"<a href='{esc(href)}'>{esc(text)}</a>" for text, href in links) + "</nav>"
        )
    if table is not None:
        parts.append(_table_html(table if isinstance(table, Table) else Table(*table)))
    for section in sections:
        parts.append(f"<section><h2>{esc(section.title)}</h2><p>{esc(section.explanation)}</p>")
        if section.table is not None:
            parts.append(_table_html(section.table))
        for image in [section.image, *section.extra_images]:
            if image is not None:
                source = _data_url(page_dir / image) if embed else image
                parts.append(f"<p><img src='{esc(source)}' alt='{esc(section.title)}'></p>")
        parts.append("</section>")
    if footer:
        parts.append(f"<footer>{esc(footer)}</footer>")
    parts.append("</body></html>\n")
    write_text(path, "\n".join(parts))
    return Path(path)


def _table_html(table: Table) -> str:
    esc = html.escape
    rows = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header) + "</tr>"]
    for row in table.rows:
        cells = "".join(
            f"<td class='num'>{esc(c)}</td>" if i else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
        )
        rows.append(f"<tr>{cells}</tr>")
    rows.append("</table>")
    body = "\n".join(rows)
    if table.collapsed:
        return f"<details><summary>{esc(table.collapsed)}</summary>{body}</details>"
    return body


def _data_url(image: Path) -> str:
    kind = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg+xml"}.get(
        image.suffix.lower(), "png"
    )
    return f"data:image/{kind};base64," + base64.b64encode(image.read_bytes()).decode("ascii")
