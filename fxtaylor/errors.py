"""Errors fxtaylor raises on purpose. Each message names what went wrong and how to fix it."""


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
