"""The playground's files (what ``trimode serve`` shows at ``/``), and a recorded trace as one
self-contained HTML page: the same page and script with the events embedded, no server, no network.

``trimode generate --trace out.html`` writes such a page (``out.json``: the events as JSON), so a
user can attach what the decoders did to a bug report.
"""

from __future__ import annotations

import json
from pathlib import Path

STATIC = Path(__file__).parent / "static"  # index.html, playground.js, playground.css


def recorded(model: str, prompt: str, traces: dict[str, list[dict]], images: list[str] | None = None) -> dict:
    """What a trace file holds: the model, the prompt, and per mode its events as one row saw them
    (:func:`trimode.generation.trace.row_view`, each with its tokens' ``text``); with ``images``, the
    images the prompt carried (as the user named them: file paths), so a report says what was seen."""
    data = {"model": model, "prompt": prompt, "traces": traces}
    if images:
        data["images"] = [_short_source(image) for image in images]
    return data


def _short_source(source: str, limit: int = 200) -> str:
    """An image's name for the record: a data: URL (megabytes) is cut after its type."""
    return source if len(source) <= limit else source[:limit] + "..."


def trace_page(data: dict) -> str:
    """The playground page with ``data`` (:func:`recorded`) embedded and drawn at load: one file."""
    page = (STATIC / "index.html").read_text()
    css = (STATIC / "playground.css").read_text()
    script = (STATIC / "playground.js").read_text()
    embedded = json.dumps(data).replace("</", "<\\/")  # nothing in the data can close the script element
    page = page.replace('<link rel="stylesheet" href="/static/playground.css">', f"<style>\n{css}</style>")
    return page.replace('<script src="/static/playground.js"></script>',
                        f"<script>window.TRIMODE_RECORDED = {embedded};</script>\n<script>\n{script}</script>")


def write_trace(path: str | Path, data: dict) -> Path:
    """``data`` (:func:`recorded`) as ``path``: a page if it ends in .html, JSON if in .json."""
    path = Path(path)
    if path.suffix not in (".html", ".json"):
        raise ValueError(f"--trace {path}: the file must end in .html (a page) or .json (the events)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(trace_page(data) if path.suffix == ".html" else json.dumps(data, indent=1) + "\n")
    return path
