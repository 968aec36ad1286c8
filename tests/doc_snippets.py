"""The fenced code blocks of README.md and docs/*.md, and how each is checked (tests/test_docs.py).

Every block is one of:

- **run** (a ``python`` block, the default): executed as written, in a fresh namespace in a
  temporary working directory. ``setup=NAME`` first binds the names a fragment assumes
  (``model``, ``loader``, ``opt``...: :data:`SETUPS`); ``session=NAME`` shares one namespace
  with the earlier blocks of the same session (a page's snippets that build on each other, run
  in page order); ``sub=OLD→NEW`` replaces text before running (the sizes a page shows made
  small enough for CI: each substitution must occur in the block, so it cannot go stale
  silently). ``bind=fxtaylor.prune — reason`` runs the block with that callable replaced by
  an autospec of it: the documented call is bound to the real signature (and, for
  ``fxtaylor.prune``, its options checked by the real validators) and returns an autospec of
  the result, whose attributes and methods are checked the same way — for a call that runs for
  minutes, with the reason.
- **check** (a ``bash`` block, the default): every command is checked against what it names —
  ``fxtaylor ...`` (also after ``torchrun ... -m``) parsed by the command's own parser, a
  ``python benchmarks/x.py --flag`` script and its flags, ``pip install '.[extra]'`` extras,
  ``pytest PATH`` paths, heredoc Python compiled.
- **output** (an untagged or ``text`` block): ``output=NAME`` makes the output with
  :data:`OUTPUTS` and requires the block's words to appear in it in order, numbers and
  durations masked and ``...``/``…`` standing for anything (:func:`matches`).
- **skip**: not run, with the reason (a GPU, several processes, a download, a long study).

The marker is an HTML comment on the line right above the fence, invisible on the rendered
page: ``<!-- doctest: setup=classifier; sub=224→32 -->`` or ``<!-- doctest: skip — needs a
GPU -->``.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doctest:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    mode: str  # run | check | output | skip
    setup: str | None = None
    session: str | None = None
    subs: list[tuple[str, str]] = field(default_factory=list)
    output: str | None = None
    reason: str = ""
    binds: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def substituted(self) -> str:
        code = self.code
        for old, new in self.subs:
            if old not in code:
                raise AssertionError(f"{self.id}: the marked substitution {old!r}→{new!r} no longer occurs in the block")
            code = code.replace(old, new)
        return code


def _marker(block: Block, text: str) -> None:
    text = text.strip()
    if text.startswith("skip"):
        block.mode, block.reason = "skip", text[len("skip"):].strip(" —-:")
        if not block.reason:
            raise AssertionError(f"{block.id}: a skipped block must say why (<!-- doctest: skip — reason -->)")
        return
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if key == "setup":
            block.setup = value
        elif key == "session":
            block.session = value
        elif key == "sub":
            old, sep, new = value.partition("→")
            if not sep:
                raise AssertionError(f"{block.id}: write a substitution as sub=OLD→NEW, got {value!r}")
            block.subs.append((old, new))
        elif key == "output":
            block.mode, block.output = "output", value
        elif key == "run":
            block.mode = "run"
        elif key == "bind":
            names, _, block.reason = value.partition(" — ")
            block.binds = [n.strip() for n in names.split(",")]
            if not block.reason.strip():
                raise AssertionError(f"{block.id}: a bound call must say why it is not run (bind=NAME — reason)")
        else:
            raise AssertionError(f"{block.id}: unknown doctest marker {part!r}")


def blocks(pages=PAGES) -> list[Block]:
    """Every fenced block of ``pages``, with its marker read."""
    out = []
    for page in pages:
        lines = page.read_text().split("\n")
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            indent, lang = len(m.group(1)), m.group(2)
            j = i + 1
            while not lines[j].strip().startswith("```"):
                j += 1
            code = "\n".join(line[indent:] for line in lines[i + 1:j])
            mode = {"python": "run", "bash": "check"}.get(lang, "output")
            b = Block(page, i + 1, lang, code, mode)
            above = lines[i - 1] if i else ""
            mk = MARKER.match(above)
            if mk:
                _marker(b, mk.group(1))
            out.append(b)
            i = j + 1
    return out


# -- checking shell commands --------------------------------------------------------------

def commands(code: str) -> list[tuple[list[str], str | None]]:
    """The commands of a shell block as argument lists (continuation lines joined, comments
    and ``VAR=value`` prefixes dropped), each with the heredoc it reads, if any."""
    out, lines = [], code.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i]
        i += 1
        heredoc = None
        m = re.search(r"<<\s*'?(\w+)'?", line)
        if m:
            end = lines.index(m.group(1), i)
            heredoc, i = "\n".join(lines[i:end]), end + 1
            line = line[:m.start()]
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words.pop(0)
        for part in _split_and(words):
            out.append((part, heredoc))
    return out


def _split_at(words: list[str], sep: str) -> list[list[str]]:
    """``words`` cut at each ``sep`` (the separators dropped; empty pieces kept)."""
    parts, cur = [], []
    for w in words:
        if w == sep:
            parts.append(cur)
            cur = []
        else:
            cur.append(w)
    parts.append(cur)
    return parts


def _split_and(words: list[str]) -> list[list[str]]:
    return [p for p in _split_at(words, "&&") if p]


def check_command(words: list[str], heredoc: str | None, where: str) -> None:
    """Raise AssertionError when a documented command names something that does not exist."""
    prog, args = words[0], [w for w in words[1:] if w not in ("...", "…")]  # "...": your other flags
    if prog == "torchrun":
        assert "-m" in args and args[args.index("-m") + 1] == "fxtaylor", f"{where}: torchrun runs -m fxtaylor"
        prog, args = "fxtaylor", args[args.index("-m") + 2:]
    if prog == "fxtaylor":
        from fxtaylor.cli import build_parser

        try:
            build_parser().parse_args(args)
        except SystemExit as e:
            raise AssertionError(f"{where}: `fxtaylor {' '.join(args)}` is refused by the command's parser") from e
    elif prog == "python":
        if args and args[0] == "-":
            assert heredoc is not None, f"{where}: python - reads a heredoc"
            compile(heredoc, where, "exec")
            return
        script = ROOT / args[0]
        assert script.is_file(), f"{where}: no script {args[0]}"
        source = script.read_text()
        for a in args[1:]:
            if a.startswith("--"):
                flag = a.split("=")[0]
                assert f'"{flag}"' in source or f"'{flag}'" in source, f"{where}: {args[0]} has no option {flag}"
    elif prog == "pip":
        import tomllib

        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        for a in args[1:]:
            m = re.fullmatch(r"(?:\.|fxtaylor)\[([\w,-]+)\]", a)
            if m:
                for extra in m.group(1).split(","):
                    assert extra in extras, f"{where}: pyproject.toml has no extra {extra!r}"
            elif not a.startswith("-"):
                assert a in (".", "fxtaylor"), f"{where}: pip install {a}: not this project"
    elif prog == "pytest":
        for a in args:
            if not a.startswith("-") and "/" in a:
                assert (ROOT / a.split("::")[0]).exists(), f"{where}: no test path {a}"
    else:
        raise AssertionError(f"{where}: no check knows the command {prog!r}: add one to tests/doc_snippets.py")


# -- comparing output -------------------------------------------------------------------

_DURATION = re.compile(r"\b(\d+ h )?(\d+ min )?\d+(\.\d+)? s\b")
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?")


def _words(text: str) -> list[str]:
    text = _DURATION.sub(" DURATION ", text)
    text = re.sub(r"\b[KMGT](FLOPs|B)\b", r"\1", text)  # units scale with the model: 37.13 MFLOPs, 5.01 KFLOPs
    text = _NUMBER.sub("#", text)
    text = re.sub(r"# [KMGT]\b", "#", text)  # 11.18 M params
    text = re.sub(r"\bthreads\b", "thread", text)
    return text.split()


def _same(shown: str, actual: str) -> bool:
    # a path may be shown by its tail ("model.py:#" for "/tmp/x/model.py:#") and with "…" for
    # a part of it ("runs/resnet#-…/model.onnx")
    if shown == actual:
        return True
    if "/" not in actual:
        return False
    pattern = ".*".join(re.escape(part) for part in shown.split("…"))
    return re.search(f"(^|/){pattern}$" if not shown.startswith("/") else f"{pattern}$", actual) is not None


def matches(shown: str, actual: str) -> str | None:
    """None when the documented output ``shown`` is what ``actual`` says, else where it is not.

    Both are read as words, numbers and durations masked (they are one run's). ``...`` or
    ``…`` in ``shown`` stands for any words; between them, ``shown``'s words must be a run of
    consecutive words of ``actual``, in order — a changed or added word in a line the page
    shows fails (lines may wrap differently)."""
    alone = re.compile(r"(?<!\S)(…|\.\.\.)(?!\S)")  # "…" or "..." as a word: any words
    want = _words(alone.sub(" ... ", shown))
    have = _words(actual)
    segments = _split_at(want, "...")
    k = 0
    for seg in filter(None, segments):
        for start in range(k, len(have) - len(seg) + 1):
            if all(_same(w, have[start + i]) for i, w in enumerate(seg)):
                k = start + len(seg)
                break
        else:
            best = max(n for n in range(len(seg) + 1) if any(
                all(_same(w, have[st + i]) for i, w in enumerate(seg[:n])) for st in range(k, len(have) - n + 1)))
            return (f"the shown words {' '.join(seg[max(0, best - 6):best])} [{' '.join(seg[best:best + 3])}] "
                    f"are not in the output, in order:\n{actual}")
    return None
