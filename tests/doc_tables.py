"""Option tables of the docs, generated from the code that defines the options: the command's
argparse parsers and the option dataclasses' fields (their ``metadata["help"]``). A page holds
a table between ``<!-- table: NAME -->`` and ``<!-- /table -->``; tests/test_docs.py fails
when one differs from what this file generates, so a new option cannot be left out.

    python tests/doc_tables.py          # rewrite every table in place
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"(<!-- table: (?P<name>[\w.\- ]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def cli_table(command: str) -> str:
    """``fxtaylor COMMAND``'s options and their help, argparse's own text (defaults in
    brackets: a default the parser computes, such as the device, would differ by machine)."""
    from fxtaylor.cli import build_parser

    parser = build_parser().commands[command]
    rows = ["| option | meaning |", "|---|---|"]
    for action in parser._actions:  # argparse keeps no public list of a parser's arguments
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flags = " / ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest.upper()}`"
        if not action.help:
            raise AssertionError(f"fxtaylor {command} {flags}: give it a help text (it is the documentation)")
        rows.append(f"| {flags} | {_cell(action.help % dict(vars(action), prog='fxtaylor'))} |")
    return "\n".join(rows)


def fields_table(cls) -> str:
    """A dataclass's fields: name, default, meaning (``field(metadata={"help": ...})``)."""
    rows = ["| field | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f"`{f.default!r}`"
        elif f.default_factory is not dataclasses.MISSING:
            default = f"`{f.default_factory()!r}`"
        else:
            default = "required"
        help_text = f.metadata.get("help")
        if not help_text:
            raise AssertionError(f"{cls.__name__}.{f.name}: give it field(metadata={{'help': ...}}) (it is the documentation)")
        rows.append(f"| `{f.name}` | {default} | {_cell(help_text)} |")
    return "\n".join(rows)


def generate(name: str) -> str:
    kind, _, what = name.partition(" ")
    if kind == "cli":
        return cli_table(what)
    if kind == "fields":
        import importlib

        module, _, cls = what.rpartition(".")
        return fields_table(getattr(importlib.import_module(module), cls))
    raise AssertionError(f"unknown table {name!r}")


def tables(text: str):
    """``(name, body as written, body generated)`` for each table of a page."""
    for m in TABLE.finditer(text):
        yield m.group("name"), m.group("body").strip("\n"), generate(m.group("name"))


def rewrite(path: Path) -> bool:
    text = path.read_text()
    new = TABLE.sub(lambda m: f"{m.group(1)}{generate(m.group('name'))}\n{m.group(4)}", text)
    if new != text:
        path.write_text(new)
    return new != text


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        if rewrite(page):
            print(f"rewrote the tables of {page.relative_to(ROOT)}")
