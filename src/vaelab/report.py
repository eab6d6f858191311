"""Static HTML pages that show a run's (or the demo's) pictures with a line of explanation each."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from vaelab.fileio import write_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } .lead { color: #555; margin-top: 0; }
section { margin: 2.2em 0; } h2 { font-size: 1.2em; margin-bottom: 0.3em; }
section p { margin-top: 0; color: #333; } img { max-width: 100%; border: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
footer { color: #777; font-size: 0.9em; margin-top: 3em; }
"""


@dataclass
class Section:
    """One figure of a report: a heading, a one-line explanation, an image path relative to the page."""

    title: str
    explanation: str
    image: str


def write_report(
    path: str | Path,
    title: str,
    lead: str,
    sections: list[Section],
    table: tuple[list[str], list[list[str]]] | None = None,
    footer: str = "",
) -> Path:
    """Write a self-contained HTML page (images referenced relatively), atomically."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1><p class='lead'>{esc(lead)}</p>",
    ]
    if table is not None:
        header, rows = table
        parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = "".join(
                f"<td class='num'>{esc(c)}</td>" if i else f"<td>{esc(c)}</td>" for i, c in enumerate(row)
            )
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</table>")
    for section in sections:
        parts.append(
            f"<section><h2>{esc(section.title)}</h2><p>{esc(section.explanation)}</p>"
            f"<img src='{esc(section.image)}' alt='{esc(section.title)}'></section>"
        )
    if footer:
        parts.append(f"<footer>{esc(footer)}</footer>")
    parts.append("</body></html>\n")
    write_text(path, "\n".join(parts))
    return Path(path)
