"""A self-contained HTML page: inline CSS, PNGs as data URIs, no script, no network."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 24px; margin: 8px 0 4px; } h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.sub { color: #59636e; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #d0d7de; border-radius: 8px; padding: 10px 14px; min-width: 150px; }
.card b { display: block; font-size: 21px; } .card span { color: #59636e; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
img { max-width: 100%; }
.maps { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 16px; }
.pair { display: flex; gap: 6px; } .pair img { width: 50%; } img.map { image-rendering: pixelated; }
figure { margin: 0; } figcaption { color: #59636e; font-size: 13px; margin-top: 4px; }
.note { color: #9a6700; } .warning { color: #b42318; font-weight: 600; }
code { background: #f6f8fa; padding: 1px 4px; border-radius: 4px; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, css_class: str = "") -> str:
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f'<img src="{data_uri(png)}" alt="{esc(alt)}"{cls}>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cards(items: Iterable[tuple[str, str]]) -> str:
    """Headline numbers: (value, what it is)."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{esc(value)}</b><span>{esc(label)}</span></div>' for value, label in items
    ) + "</div>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def warning(text: str) -> str:
    """A result that may not be usable (low fidelity, a noisy benchmark): shown louder than a note."""
    return f'<p class="warning">warning: {esc(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


@dataclass
class Section:
    title: str
    body: str  # HTML, already escaped
    anchor: str = ""


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    parts = [f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network, ever: the page must render the same offline and in a sandbox.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">"
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        f'<body><main><h1>{esc(title)}</h1><p class="sub">{esc(subtitle)}</p>{"".join(parts)}</main></body></html>\n'
    )
