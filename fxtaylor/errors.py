"""Errors fxtaylor raises on purpose. Each message names what went wrong and how to fix it."""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, TypeVar

T = TypeVar("T", bound=type)


class FxTaylorError(Exception):
    """Base class of every error fxtaylor raises deliberately."""


class TraceError(FxTaylorError):
    """torch.fx could not trace the model (e.g. Python control flow on tensor values)."""


class PruneError(FxTaylorError):
    """A pruning request the channel graph cannot honour (frozen group, too many channels, ...)."""


class ArgumentError(FxTaylorError, ValueError):
    """An argument of the wrong type or value (still a ``ValueError`` for code that catches those)."""


class WriteError(FxTaylorError, OSError):
    """A file or directory fxtaylor had to write could not be written (still an ``OSError``)."""


def message(e: BaseException) -> str:
    """``e`` as one line: its message's first line; for an error a DataLoader worker raised
    (re-raised in the main process as "Caught X in DataLoader worker process N. Original
    Traceback ..."), the original error's own line."""
    text = str(e).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Caught ") and "Original Traceback" in text:
        head, sep, rest = lines[-1].partition(": ")
        if sep and all(part.isidentifier() for part in head.split(".")):
            name = head.rpartition(".")[2]
            return rest if issubclass(type(e), FxTaylorError) else f"{name}: {rest}"
        return lines[-1]
    return lines[0]


def describe(e: BaseException) -> str:
    """One line for a wrapped library error: an fxtaylor error's message, else its type and
    message (``RuntimeError: Given groups=1, ...``)."""
    if isinstance(e, FxTaylorError):
        return message(e)
    text = message(e)
    head, sep, _ = text.partition(": ")
    named = sep and head.isidentifier() and (head.endswith(("Error", "Exception")) or head == type(e).__name__)
    return text if named else f"{type(e).__name__}: {text}"


def options_class(cls: T) -> T:
    """Class decorator, above ``@dataclass``, for a settings class users build by keyword
    (``Schedule``, ``Target``, ``Deployment``, ``Training``): a call its ``__init__`` cannot
    bind — an unknown option, too many positional values, a missing or doubled one — raises an
    :class:`ArgumentError` (an :class:`FxTaylorError`) that names the class, the option, the
    closest valid name and every option, instead of Python's bare ``TypeError`` (which the
    command line would report as an fxtaylor bug). ``dataclasses.replace`` goes through it too.

    Only ``__init__`` is wrapped: the class stays a dataclass (fields, ``replace``, equality,
    ``frozen``), and pickling and ``copy.deepcopy``, which do not call ``__init__``, are
    unchanged. A call that binds runs the dataclass's own ``__init__`` untouched: the check
    costs nothing until a call fails."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except TypeError:
            try:
                signature.bind(self, *args, **kwargs)
            except TypeError:  # the call itself was wrong: nothing of __init__ ran
                raise ArgumentError(bad_call(cls.__name__, signature, args, kwargs)) from None
            raise  # a TypeError from inside __init__ / __post_init__: not a calling mistake

    cls.__init__ = __init__
    return cls


def unknown_option(owner: str, name: str, options: list[str]) -> str:
    """``unknown option 'bad' for Schedule (did you mean 'x'?); options: a, b, ...``."""
    close = difflib.get_close_matches(name, options, n=1) if isinstance(name, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown option {name!r} for {owner}{hint}; options: {', '.join(options)}"


def bad_call(owner: str, signature: inspect.Signature, args: tuple, kwargs: dict) -> str:
    """Why ``owner(*args, **kwargs)`` does not bind to ``signature`` (whose first parameter is
    ``self``), in one line that says how to call it."""
    params = list(signature.parameters.values())[1:]
    names = [p.name for p in params]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    unknown = [k for k in kwargs if k not in names]
    if unknown:
        return unknown_option(owner, unknown[0], names)
    if len(args) > len(positional):
        return (f"{owner} takes at most {len(positional)} values by position ({', '.join(positional)}), got {len(args)}: "
                "pass options by name")
    twice = [n for n in positional[:len(args)] if n in kwargs]
    if twice:
        return f"{owner} got {twice[0]!r} twice, by position and by name: give it once"
    given = set(positional[:len(args)]) | set(kwargs)
    missing = [p.name for p in params if p.default is p.empty and p.name not in given]
    if missing:
        needs = " and ".join(", ".join(map(repr, missing)).rsplit(", ", 1))
        return f"{owner} needs {needs}; options: {', '.join(names)}"
    return f"{owner} cannot take these arguments; options: {', '.join(names)}"
