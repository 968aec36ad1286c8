"""The ``fxtaylor`` command.

``fxtaylor prune``                 prune the embedded default (ResNet-18 on bundled digits) to 50 % FLOPs
``fxtaylor prune --data DIR ...``  prune your model on your ImageFolder data
``fxtaylor inspect --model NAME``  channel groups, per-channel FLOPs, what is prunable and why not
``fxtaylor report RUN_DIR``        the summary table of a finished run, plots redrawn if missing
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from . import distributed
from .errors import FxTaylorError
from .files import atomic_write

RUN_ARGS = "args.json"  # the settings of a run, reused by --resume


def _fraction(text: str) -> float:
    v = float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}")
    return v


def _non_negative(text: str) -> float:
    v = float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return v


def _parser() -> argparse.ArgumentParser:
    from .pruner import DEFAULT_FLOPS_REG

    parser = argparse.ArgumentParser(prog="fxtaylor", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model to a FLOPs or latency target (no arguments: the offline default)")
    p.add_argument("--model", default="resnet18", help="torchvision (or timm) classification model name [resnet18]")
    p.add_argument("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), a state dict file, or a model saved by fxtaylor")
    p.add_argument("--data", help="ImageFolder directory with train/<class>/ and val/<class>/ [bundled digits]")
    p.add_argument("--target-flops", type=_fraction, help="fraction of the FLOPs to keep [0.5 unless --target-latency]")
    p.add_argument("--target-latency", type=_fraction,
                   help="instead: fraction of the latency to keep, measured on the deployment below (docs/latency.md)")
    p.add_argument("--latency-device", help="device the latency is measured on [the --device]")
    p.add_argument("--latency-batch", type=_positive_int, default=1, help="batch size of the deployment [1]")
    p.add_argument("--latency-dtype", default="float32", help="float32, float16 or bfloat16 [float32]")
    p.add_argument("--latency-format", help="channels_last or contiguous [per device, docs/latency.md]")
    p.add_argument("--latency-threads", type=_positive_int, help="CPU threads while timing [torch's default]")
    p.add_argument("--latency-table", metavar="DIR",
                   help="latency tables measured on another machine (its <cache>/latency/<deployment key> folder): "
                        "--target-latency is then reached by their prediction, nothing is timed here")
    p.add_argument("--selection", choices=["rank", "knapsack"],
                   help="rank: lowest score first (paper); knapsack: lowest importance per resource saved [rank]")
    p.add_argument("--flops-reg", type=_non_negative, default=DEFAULT_FLOPS_REG, help=f"λ, FLOPs regularisation [{DEFAULT_FLOPS_REG}]")
    p.add_argument("--updates-between-prunes", type=_positive_int, help="minibatch updates observed per pruning step [30; 10 on digits]")
    p.add_argument("--maps-per-prune", type=_positive_int, help="maps removed per step [1 %% of the prunable maps]")
    p.add_argument("--flops-per-prune", type=_fraction, help="instead: remove this fraction of the original FLOPs (or latency) per step")
    p.add_argument("--round-to", type=_positive_int,
                   help="keep channel counts multiples of this [1 for FLOPs; for latency, the multiple the measured tables prefer]")
    p.add_argument("--criterion", default="taylor", choices=["taylor", "weight", "activation_mean", "activation_std", "random"],
                   help="how maps are ranked [taylor, the paper's]; the others are baselines")
    p.add_argument("--lr", type=_non_negative, help="SGD learning rate while pruning [1e-4 (paper); 1e-3 on digits]")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="[32, as the paper]")
    p.add_argument("--finetune-epochs", type=int, help="epochs of fine-tuning before pruning [0; 8 on digits, cached]")
    p.add_argument("--finetune-lr", type=_non_negative, default=0.05, help="peak one-cycle learning rate of that fine-tuning [0.05]")
    p.add_argument("--final-updates", type=int, default=0, help="fine-tuning updates after the last pruning step [0]")
    p.add_argument("--min-accuracy", type=float, help="stop before validation accuracy falls below this fraction")
    p.add_argument("--input-size", type=int, help="image side [32 on digits, 224 otherwise]")
    p.add_argument("--workers", type=int, help="data-loading processes for --data [min(4, cores)]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="[cuda if available, else cpu]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    p.add_argument("--out", help="run directory [runs/<model>-<date>-<time>]")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out with its saved settings")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=prune)

    p = sub.add_parser("inspect", help="show the channel groups of a model")
    p.add_argument("--model", default="resnet18", help="torchvision (or timm) classification model name")
    p.add_argument("--input-size", type=int, default=224, help="side of the example image")
    p.set_defaults(func=inspect)

    p = sub.add_parser("report", help="summary and plots of a finished run")
    p.add_argument("run_dir", help="the run directory (holds report.json)")
    p.set_defaults(func=lambda a: _report().command(a.run_dir))
    return parser


def _report():
    from . import report

    return report


def prune(args: argparse.Namespace) -> int:
    """Under torchrun (docs/distributed.md) every rank runs this; rank 0 writes and prints."""
    args.device = distributed.init_from_env(args.device)
    try:
        return _prune(args)
    finally:
        distributed.shutdown()


def _prune(args: argparse.Namespace) -> int:
    from . import job
    from .pruner import prune as run_prune
    from .pruner.state import seed_everything

    t0 = time.perf_counter()
    main = distributed.is_main()
    if args.target_flops is not None and args.target_latency is not None:
        raise FxTaylorError("give --target-flops or --target-latency, not both")
    if args.latency_table and args.target_latency is None:
        raise FxTaylorError("--latency-table is for --target-latency: give the fraction of the latency to keep")
    if args.target_flops is None and args.target_latency is None:
        args.target_flops = 0.5
    _deployment(args)  # a bad dtype, format or device fails before anything is built or written
    try:
        out, error = _run_dir(args), None
    except FxTaylorError as e:
        out, error = None, str(e)
    error = next((e for e in distributed.gather(error) if e is not None), None)  # all ranks stop, or none
    if error is not None:
        raise FxTaylorError(error)
    on_digits = args.data is None
    if args.updates_between_prunes is None:
        args.updates_between_prunes = 10 if on_digits else 30
    if args.lr is None:
        args.lr = 1e-3 if on_digits else 1e-4
    seed_everything(args.seed)
    work = job.build(args)  # bad model names and data folders fail here, before anything is written
    if not args.resume and main:
        _start(out, args)
    if main:
        where = f" on {distributed.world_size()} processes" if distributed.active() else ""
        print(f"fxtaylor: {args.model} on {work.description}{where}", file=sys.stderr)
    opt = torch.optim.SGD(work.model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    cost = None
    if args.latency_table:
        from .cost import LatencyCost
        from .latency import LatencyModel

        cost = LatencyCost(table=LatencyModel.load(args.latency_table, work.model, next(iter(work.train))[0][:1]))
    result = run_prune(
        work.model, work.train, target_flops=args.target_flops, target_latency=args.target_latency,
        deployment=_deployment(args), cost=cost, optimizer=opt, val_loader=work.val,
        updates_between_prunes=args.updates_between_prunes, maps_per_prune=args.maps_per_prune,
        flops_per_prune=args.flops_per_prune, criterion=args.criterion, round_to=args.round_to, selection=args.selection,
        flops_reg=args.flops_reg, min_accuracy=args.min_accuracy, final_updates=args.final_updates,
        checkpoint_dir=out, resume=args.resume, seed=args.seed, arch=work.arch, progress=args.progress,
    )
    if not main:
        return 0
    result.save(out / "model.pt")
    rep = result.report(model_file="model.pt")
    rep["config"].update(data=work.description, lr=args.lr, batch_size=args.batch_size, command=sys.argv[1:],
                         processes=distributed.world_size())
    rep["timings"].update(finetune_s=work.finetune_s, total_s=time.perf_counter() - t0)  # the whole command
    files = _report().write(out, rep)
    print(_report().summary_table(rep))
    print(f"\nrun directory {out}: " + ", ".join(p.name for p in [out / "model.pt", *files.values()]))
    return 0


def _deployment(args: argparse.Namespace):
    """Where latency is measured (--latency-*), checked against this machine."""
    from .latency import Deployment

    dep = Deployment(device=args.latency_device or args.device, batch_size=args.latency_batch, dtype=args.latency_dtype,
                     memory_format=args.latency_format, threads=args.latency_threads)
    return dep.resolved(torch.nn.Linear(1, 1))  # the device is named: the module only stands in


def _run_dir(args: argparse.Namespace) -> Path:
    """The run directory; on --resume, the run's saved settings replace the given ones."""
    if args.resume:
        if args.out is None:
            raise FxTaylorError("--resume needs --out RUN_DIR (the directory of the interrupted run)")
        out = Path(args.out)
        saved = out / RUN_ARGS
        if not saved.is_file():
            raise FxTaylorError(f"nothing to resume in {out}: no {RUN_ARGS} (was it started by fxtaylor prune?)")
        keep = {"device": args.device, "progress": args.progress}
        vars(args).update(json.loads(saved.read_text()), resume=True, out=str(out), **keep)
        return out
    out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if (out / "checkpoint.pt").exists() or (out / "report.json").exists():
        raise FxTaylorError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    return out


def _start(out: Path, args: argparse.Namespace) -> None:
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "resume", "out", "device", "progress")}
    atomic_write(out / RUN_ARGS, json.dumps(settings, indent=2).encode())


def inspect(args: argparse.Namespace) -> int:
    from . import models
    from .cost import FlopsCost
    from .graph import trace
    from .graph.atoms import PRODUCER

    model = models.build_named(args.model)[0].eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    graph = trace(model, x)
    flops = FlopsCost().sync(graph, x)
    total, cost = flops.total(), flops.unit_costs()
    rows = []
    for g in graph.groups:
        producers = [m.name for m in g.members if m.kind == PRODUCER]
        state = "prunable" if g.prunable else ("frozen: " + g.frozen[0] if g.frozen else "at minimum")
        shown = ", ".join(producers[:3]) + (f" (+{len(producers) - 3})" if len(producers) > 3 else "")
        per = float(cost[g.units].mean()) / total if g.size else 0.0
        rows.append((str(g.index), str(g.size), str(g.width), f"{per:.3%}", str(len(g.members)), shown, state))
    head = ("group", "channels", "width", "FLOPs/ch", "members", "producers", "state")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'>' if i < 5 else '<'}{w if i < len(widths) - 1 else ''}}}" for i, w in enumerate(widths))
    print(fmt.format(*head))
    for r in rows:
        print(fmt.format(*r))
    prunable = graph.prunable_groups
    print(
        f"\n{args.model}: {len(graph.groups)} groups, {len(prunable)} prunable with "
        f"{sum(g.num_prunable for g in prunable)} removable channels; {total / 1e9:.3f} GFLOPs at "
        f"{args.input_size}×{args.input_size} (FLOPs/ch: share of them one channel of the group costs)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    # torchvision's model code still calls torch.jit.script; torch 2.14 deprecates it loudly
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except FxTaylorError as e:
        print(f"fxtaylor: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nfxtaylor: interrupted; `fxtaylor prune --resume --out RUN_DIR` continues a pruning run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
