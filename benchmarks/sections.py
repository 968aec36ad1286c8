"""Generated tables live between two HTML comments in a hand-written doc, so a runner can
refresh its numbers without touching the prose around them."""
from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, key: str, body: str, title: str = "# Results") -> None:
    """Replace the text between ``<!-- key:begin -->`` and ``<!-- key:end -->`` in ``doc``
    (appended, with the markers, when absent; the doc is created with ``title`` if missing)."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = doc.read_text() if doc.exists() else f"{title}\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
