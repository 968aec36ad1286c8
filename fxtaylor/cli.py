"""The ``fxtaylor`` command.

``fxtaylor inspect --model NAME`` prints the channel groups of a torchvision model: what is tied,
how many channels each group has, and what is prunable or frozen (and why).
"""
from __future__ import annotations

import argparse
import sys
import warnings

import torch

from .errors import FxTaylorError
from .graph import trace
from .graph.atoms import PRODUCER


def _build_model(name: str) -> torch.nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None)
    except ValueError:
        known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:8])
        raise FxTaylorError(f"unknown model {name!r}; torchvision classification models include {known}, ...") from None


def inspect(args: argparse.Namespace) -> int:
    model = _build_model(args.model).eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    graph = trace(model, x)
    rows = []
    for g in graph.groups:
        producers = [m.name for m in g.members if m.kind == PRODUCER]
        state = "prunable" if g.prunable else ("frozen: " + g.frozen[0] if g.frozen else "at minimum")
        shown = ", ".join(producers[:3]) + (f" (+{len(producers) - 3})" if len(producers) > 3 else "")
        rows.append((str(g.index), str(g.size), str(g.width), str(len(g.members)), shown, state))
    head = ("group", "channels", "width", "members", "producers", "state")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'>' if i < 4 else '<'}{w if i < len(widths) - 1 else ''}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
    prunable = graph.prunable_groups
    print(
        f"\n{args.model}: {len(graph.groups)} groups, {len(prunable)} prunable with "
        f"{sum(g.num_prunable for g in prunable)} removable channels"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    # torchvision's model code still calls torch.jit.script; torch 2.14 deprecates it loudly
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    parser = argparse.ArgumentParser(prog="fxtaylor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show the channel groups of a model")
    p.add_argument("--model", default="resnet18", help="torchvision classification model name")
    p.add_argument("--input-size", type=int, default=224, help="side of the example image")
    p.set_defaults(func=inspect)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FxTaylorError as e:
        print(f"fxtaylor: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
