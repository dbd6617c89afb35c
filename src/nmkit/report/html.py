"""Self-contained HTML reports: figures embedded as base64 PNG, tables, provenance; opens offline.

A report is built from sections; each holds paragraphs, figures (matplotlib figures or PNG files) and
tables (pandas DataFrames). Nothing is fetched from the network: no scripts, fonts or style sheets.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;line-height:1.45}
h1{border-bottom:3px solid #2a6f97;padding-bottom:.3em} h2{color:#2a6f97;margin-top:2em;border-bottom:1px solid #ddd}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top} figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.9em;color:#555;max-width:560px}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#eef4f8} td:first-child,th:first-child{text-align:left}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em} pre{background:#f6f8fa;padding:1em;overflow-x:auto;font-size:.8em}
nav a{margin-right:1em}
"""


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, paragraph: str, note: bool = False) -> "Section":
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(paragraph)}</p>")
        return self

    def figure(self, fig_or_path: Any, caption: str = "", width: int | None = None) -> "Section":
        """Embed a matplotlib figure (closed afterwards) or a PNG file."""
        if isinstance(fig_or_path, (str, Path)):
            data = Path(fig_or_path).read_bytes()
        else:
            buffer = io.BytesIO()
            fig_or_path.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            import matplotlib.pyplot as plt

            plt.close(fig_or_path)
            data = buffer.getvalue()
        style = f' style="width:{width}px"' if width else ""
        encoded = base64.b64encode(data).decode()
        alt = html.escape(caption or self.title)
        self.parts.append(f'<figure><img class="figure" alt="{alt}" src="data:image/png;base64,{encoded}"{style}>'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        return self

    def table(self, frame: pd.DataFrame, caption: str = "", float_format: str = "{:.4g}", max_rows: int = 200) -> "Section":
        shown = frame.head(max_rows)
        table_html = shown.to_html(index=False, border=0, float_format=lambda v: float_format.format(v), na_rep="–", classes="data")
        cap = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
        more = f"<p><i>{len(frame) - max_rows} more rows in the CSV.</i></p>" if len(frame) > max_rows else ""
        self.parts.append(cap + table_html + more)
        return self

    def code(self, content: Any) -> "Section":
        text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
        self.parts.append(f"<pre>{html.escape(text)}</pre>")
        return self


@dataclass
class Report:
    title: str
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        section = Section(title)
        self.sections.append(section)
        return section

    def render(self) -> str:
        nav = " ".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(self.sections))
        body = "\n".join(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>\n' + "\n".join(s.parts) + "</section>"
                         for i, s in enumerate(self.sections))
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1><nav>{nav}</nav>\n{body}\n</body></html>")

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
