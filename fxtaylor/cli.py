"""The ``fxtaylor`` command.

``fxtaylor prune``                 prune the embedded default (ResNet-18 on bundled digits) to 50 % FLOPs
``fxtaylor prune --data DIR ...``  prune your classification model on your ImageFolder data
``fxtaylor inspect --model NAME``  channel groups, per-channel FLOPs, what is prunable and why not

The command prunes classification models (torchvision or timm names): its data is an
ImageFolder, its loss cross-entropy. Detection, segmentation, video and optical-flow models
prune from Python: fxtaylor.prune(model, loader, batch_loss=fn) (docs/usage.md).
``fxtaylor report RUN_DIR``        the summary table of a finished run, plots redrawn if missing
``fxtaylor export RUN_DIR``        the pruned model of a run as ONNX (or torch.export), checked against PyTorch
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from . import distributed, optim
from .errors import FxTaylorError, message
from .files import atomic_write, check_writable_dir

RUN_ARGS = "args.json"  # the settings of a run, reused by --resume
CHECKPOINT = "checkpoint.pt"
# flags a resume may change: where and how it runs, not what it computes (recorded in the report)
RESUME_MAY_CHANGE = ("device", "workers", "progress", "debug")
NOT_SETTINGS = ("func", "resume", "out", "progress", "debug", "given", "argv")  # never saved in args.json
RUN_META = ("argv", "timings", "resumes")  # what args.json holds besides the settings
DEBUG_ENV = "FXTAYLOR_DEBUG"
DEFAULT_TARGET = ("flops", 0.5)  # the target when none is given: the paper's resource, half of it
# The command is classification only: its data path is an ImageFolder and its loss cross-entropy;
# the other families need their own loss (batch_loss=), which only the Python API takes.
MODEL_HELP = ("torchvision or timm classification model name (detection, segmentation, video and optical-flow "
              "models prune from Python: docs/usage.md)")
FAMILIES_HELP = ("Classification models only (torchvision or timm names; the data is an ImageFolder, the loss "
                 "cross-entropy). Detection, segmentation, video and optical-flow models prune from Python with "
                 "fxtaylor.prune(model, loader, batch_loss=fn): docs/usage.md, \"Detection, segmentation, video and "
                 "optical flow\".")


def _checked(parse, check):
    """An argparse type: ``parse`` the text, then ``check(value)`` with the library's own
    validator (a Target, Schedule or Deployment field, λ), so a bad value is refused by the
    parser with the message ``fxtaylor.prune`` would give — one rule, written once."""
    def convert(text: str):
        v = parse(text)
        try:
            check(v)
        except FxTaylorError as e:
            raise argparse.ArgumentTypeError(message(e)) from None
        return v
    return convert


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


def _count(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def build_parser() -> argparse.ArgumentParser:
    # the library's settings are only parsed here (float, int): their ranges are checked once,
    # by the same validators fxtaylor.prune uses (_settings_ok)
    from .cost import RESOURCES
    from .latency import Deployment
    from .latency.runtimes import RUNTIMES as RUNTIMES_
    from .pruner import DEFAULT_FLOPS_REG
    from .pruner.options import CRITERIA, SELECTIONS, Schedule, Target, check_flops_reg

    def schedule(field: str, parse=int):  # a Schedule field, checked by Schedule
        return _checked(parse, lambda v: Schedule(**{field: v}))

    def deployed(field: str):  # a Deployment field, checked by Deployment
        return _checked(int, lambda v: Deployment(**{field: v}))

    parser = argparse.ArgumentParser(prog="fxtaylor", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n".join(__doc__.splitlines()[2:]))
    debug = "on an error, print the traceback too (or set FXTAYLOR_DEBUG=1)"
    parser.add_argument("--debug", action="store_true", help=debug)
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = {}  # name -> sub-parser, for _given()

    p = parser.commands["prune"] = sub.add_parser(
        "prune", help=f"prune a classification model to a target ({', '.join(RESOURCES)}; no arguments: the offline default)",
        description=FAMILIES_HELP)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    p.add_argument("--model", default="resnet18", help=f"{MODEL_HELP} [resnet18]")
    p.add_argument("--weights", help="torchvision weights name (DEFAULT, IMAGENET1K_V1, ...), a state dict file, or a model saved by fxtaylor")
    p.add_argument("--data", help="ImageFolder directory with train/<class>/ and val/<class>/ [bundled digits]")
    for name, resource in RESOURCES.items():  # one target: --target-flops 0.5 unless another is given
        p.add_argument(f"--target-{name}", type=_checked(float, lambda v, name=name: Target(name, v)), help=resource.help + (f" [{DEFAULT_TARGET[1]}]" if name == DEFAULT_TARGET[0] else ""))
    p.add_argument("--latency-device", help="device the latency is measured on [the --device]")
    p.add_argument("--latency-batch", type=deployed("batch_size"), default=1, help="batch size of the deployment [1]")
    p.add_argument("--latency-dtype", default="float32", help="float32, float16 or bfloat16 [float32]")
    p.add_argument("--latency-format", help="channels_last or contiguous [per device, docs/latency.md]")
    p.add_argument("--latency-threads", type=deployed("threads"), help="CPU threads while timing [torch's default]")
    p.add_argument("--latency-runtime", type=_checked(str, lambda v: Deployment(runtime=v)), default="eager",
                   help=f"what runs the model where it is deployed, and so times it: {', '.join(RUNTIMES_)} [eager]; "
                        "docs/latency.md#runtimes")
    p.add_argument("--latency-table", metavar="DIR",
                   help="latency tables measured on another machine (its <cache>/latency/<deployment key> folder): "
                        "--target-latency is then reached by their prediction, nothing is timed here")
    p.add_argument("--selection", choices=SELECTIONS,
                   help="rank: lowest score first (paper); knapsack: lowest importance per resource saved [rank]")
    p.add_argument("--flops-reg", type=_checked(float, check_flops_reg), default=DEFAULT_FLOPS_REG,
                   help=f"λ, the weight of the target resource's cost in each score [{DEFAULT_FLOPS_REG}]")
    quick = Schedule.quick()
    p.add_argument("--quick", action="store_true",
                   help=f"a fast first look (Schedule.quick()): fewer, larger steps — {quick.per_prune * 100:g} %% of the target resource "
                        f"per step after {quick.updates_between_prunes} updates, then {quick.final_updates} fine-tuning updates — at some "
                        "cost in accuracy; schedule flags given win")
    p.add_argument("--updates-between-prunes", type=schedule("updates_between_prunes"),
                   help=f"minibatch updates observed per pruning step [30; 10 on digits; {quick.updates_between_prunes} with --quick]")
    p.add_argument("--maps-per-prune", type=schedule("maps_per_prune"), help="maps removed per step [1 %% of the prunable maps]")
    p.add_argument("--flops-per-prune", type=schedule("per_prune", float),
                   help=f"instead: remove this fraction of the dense model's target resource per step [{quick.per_prune:g} with --quick]")
    p.add_argument("--round-to", type=schedule("round_to"),
                   help="keep channel counts multiples of this [1 for FLOPs; for latency, the multiple the measured tables prefer]")
    p.add_argument("--inexact", dest="exact", action="store_false",
                   help="also prune channels tied through a normaliser's statistics (ConvNeXt's layer norms, NFNets); not exact, docs/graph.md")
    p.add_argument("--criterion", default="taylor", choices=list(CRITERIA),
                   help="how maps are ranked [taylor, the paper's]; the others are baselines")
    p.add_argument("--lr", type=_non_negative, help="SGD learning rate while pruning [1e-4 (paper); 1e-3 on digits]")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="[32, as the paper]")
    p.add_argument("--finetune-epochs", type=_count, help="epochs of fine-tuning before pruning [0; 8 on digits, cached]")
    p.add_argument("--finetune-lr", type=_non_negative, default=0.05, help="peak one-cycle learning rate of that fine-tuning [0.05]")
    p.add_argument("--final-updates", type=schedule("final_updates"),
                   help=f"fine-tuning updates after the last pruning step [0; {quick.final_updates} with --quick]")
    p.add_argument("--min-accuracy", type=schedule("min_accuracy", float), help="stop before validation accuracy falls below this fraction")
    p.add_argument("--input-size", type=_positive_int, help="image side [32 on digits, 224 otherwise]")
    p.add_argument("--workers", type=_count, help="data-loading processes for --data [min(4, cores)]")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="[cuda if available, else cpu]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    p.add_argument("--out", help="run directory [runs/<model>-<date>-<time>]")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out with its saved settings (only --device, --workers and --no-progress may differ)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=prune)

    p = parser.commands["inspect"] = sub.add_parser("inspect", help="show the channel groups of a classification model",
                                                    description=FAMILIES_HELP)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    p.add_argument("--model", default="resnet18", help=f"{MODEL_HELP} [resnet18]")
    p.add_argument("--input-size", type=_positive_int, default=224, help="side of the example image")
    p.add_argument("--inexact", dest="exact", action="store_false",
                   help="show the groups as `prune --inexact` prunes them (normalisers' channels too)")
    p.add_argument("--latency-table", metavar="DIR",
                   help="a latency table saved by LatencyModel.save: also print the share of latency that pruning can remove")
    p.set_defaults(func=inspect)

    p = parser.commands["report"] = sub.add_parser("report", help="summary and plots of a finished run")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    p.add_argument("run_dir", help="the run directory (holds report.json)")
    p.set_defaults(func=lambda a: _report().command(a.run_dir))

    from .exporting import FORMATS

    p = parser.commands["export"] = sub.add_parser(
        "export", help="write a finished run's pruned model as ONNX or torch.export, checked against PyTorch")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug)
    p.add_argument("run_dir", help="the run directory (holds report.json and model.pt)")
    p.add_argument("--format", choices=list(FORMATS), default="onnx", help="[onnx]")
    p.add_argument("--output", metavar="PATH", help="the file to write [RUN_DIR/model.onnx, or model.pt2 for torch.export]")
    p.add_argument("--no-dynamic-batch", dest="dynamic_batch", action="store_false",
                   help="export the batch size of the run's input as fixed (default: any batch size)")
    p.set_defaults(func=export)
    return parser


def _report():
    from . import report

    return report


def export(args: argparse.Namespace) -> int:
    """``fxtaylor export RUN_DIR``: the run's model.pt, loaded by :func:`fxtaylor.load`, exported
    at the run's input shape (batch 1) and checked; one line says what was written."""
    from . import saving
    from .exporting import FORMATS, check_path, example_of, export as run_export

    run_dir = Path(args.run_dir)
    report = _report().read(run_dir)  # a missing or foreign directory fails here, one line
    model_file = run_dir / str(report.get("model_file") or "model.pt")
    if not model_file.is_file():
        raise FxTaylorError(f"{run_dir} holds no pruned model ({model_file.name} not found): did the run finish?")
    out = check_path(args.output or run_dir / f"model{FORMATS[args.format]}", args.format)  # before the model loads
    model, arch = saving.load_with_arch(model_file)
    config = report.get("config") if isinstance(report.get("config"), dict) else {}
    example = example_of(config.get("input_shape") or arch.get("input_shape"), model)
    done = run_export(model, example, out, args.format, dynamic_batch=args.dynamic_batch)
    print(f"fxtaylor: wrote {done.path} ({done.format}, dynamic batch {'yes' if done.dynamic_batch else 'no'}, "
          f"max error {done.max_error:.2e} ≤ {done.allowed:.2e} allowed, {done.seconds:.1f} s)")
    return 0


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
    from .cost import LatencyCost

    targets = _targets(args)
    if len(targets) > 1:
        flags = [f"--target-{k[len('target_'):]}" for k in targets]
        raise FxTaylorError(f"give {' or '.join(flags)}, not {'both' if len(flags) == 2 else 'several'}")
    if args.latency_table and f"target_{LatencyCost.name}" not in targets:
        raise FxTaylorError(f"--latency-table is for --target-{LatencyCost.name}: give the fraction of the {LatencyCost.label} to keep")
    try:
        (out, meta), error = _run_dir(args), None
    except FxTaylorError as e:
        out, meta, error = None, {}, str(e)
    error = next((e for e in distributed.gather(error) if e is not None), None)  # all ranks stop, or none
    if error is not None:
        raise FxTaylorError(error)
    if args.resume and (out / "report.json").is_file():  # finished: nothing to continue, nothing rewritten
        if main:
            print(f"fxtaylor: {out} is a finished run: nothing to resume (its report, unchanged, follows)", file=sys.stderr)
            print(_report().summary_table(_report().read(out)))
        return 0
    if not _targets(args):  # (a resume has its run's target by now)
        setattr(args, f"target_{DEFAULT_TARGET[0]}", DEFAULT_TARGET[1])
    on_digits = args.data is None
    if args.lr is None:
        args.lr = 1e-3 if on_digits else 1e-4
    _settings_ok(args)  # bad values fail before anything is built, trained or written
    _deployment(args)
    seed_everything(args.seed)
    work = job.build(args)  # bad model names and data folders fail here, before anything is written
    if main:
        where = f" on {distributed.world_size()} processes" if distributed.active() else ""
        print(f"fxtaylor: {args.model} on {work.description}{where}", file=sys.stderr)
    opt = optim.paper_sgd(work.model, lr=args.lr)
    cost = None
    if args.latency_table:
        from .latency import LatencyModel

        cost = LatencyCost(table=LatencyModel.load(args.latency_table, work.model, next(iter(work.train))[0][:1]))
    t_call = time.perf_counter()
    started, existed = [], out.exists()

    def on_start() -> None:  # every check passed: now the run directory is written
        if main:
            _start(out, args, meta, {"setup_s": t_call - t0, "finetune_s": work.finetune_s})
        started.append(True)

    try:
        result = run_prune(
            work.model, work.train, **_targets(args),
            deployment=_deployment(args), cost=cost, optimizer=opt, val_loader=work.val,
            schedule=schedule_of(args), criterion=args.criterion, flops_reg=args.flops_reg,
            checkpoint_dir=out, resume=args.resume, seed=args.seed, arch=work.arch, progress=args.progress, on_start=on_start,
            exact=args.exact,
        )
    except BaseException as e:
        if main and started and not args.resume and not (out / CHECKPOINT).exists():
            _unstart(out, remove_dir=not existed)  # stopped before its first step was saved: nothing to resume, nothing left
        if isinstance(e, FxTaylorError) and (out / CHECKPOINT).exists():
            raise FxTaylorError(f"{message(e)}; once fixed, `fxtaylor prune --resume --out {out}` continues the run") from e
        raise
    if not main:
        return 0
    result.save(out / "model.pt")
    rep = result.report(model_file="model.pt")
    first = meta.get("argv", args.argv) if args.resume else args.argv
    resumes = [*({k: v for k, v in r.items() if k != "setup_s"} for r in meta.get("resumes", [])),
               *([_resume_record(args)] if args.resume else [])]
    rep["config"].update(data=work.description, lr=args.lr, batch_size=args.batch_size, command=first,
                         processes=distributed.world_size())
    if resumes:
        rep["config"]["resumes"] = resumes
    earlier = meta.get("timings", {}).get("setup_s", 0.0) + sum(r.get("setup_s", 0.0) for r in meta.get("resumes", []))
    rep["timings"].update(  # the whole run: every command's part up to its last checkpoint, and this one
        finetune_s=meta.get("timings", {}).get("finetune_s", 0.0) if args.resume else work.finetune_s,
        total_s=earlier + result.timings.get("resumed_at_s", 0.0) + time.perf_counter() - t0)
    files = _report().write(out, rep)
    print(_report().summary_table(rep))
    print(f"\nrun directory {out}: " + ", ".join(p.name for p in [out / "model.pt", *files.values()]))
    return 0


def _settings_ok(args: argparse.Namespace) -> None:
    """The pruning settings, checked as :func:`fxtaylor.prune` will check them, before the
    model is built (or trained, on digits without a cache)."""
    from .pruner.options import check_ranking, split_options

    split_options(None, schedule_of(args), _targets(args))
    check_ranking(args.criterion, "l2", args.flops_reg)


def schedule_of(args: argparse.Namespace):
    """The :class:`~fxtaylor.Schedule` the prune flags describe: ``Schedule.quick()`` with
    --quick, else the paper's (30 updates between steps; 10 on the digits default, whose small
    model recovers faster); every schedule flag given wins over either (``--maps-per-prune``
    replaces --quick's per-step fraction)."""
    from .pruner.options import Schedule

    base = Schedule.quick() if getattr(args, "quick", False) else Schedule(updates_between_prunes=10 if args.data is None else 30)
    given = {"updates_between_prunes": args.updates_between_prunes, "maps_per_prune": args.maps_per_prune,
             "per_prune": args.flops_per_prune, "round_to": args.round_to, "selection": args.selection,
             "final_updates": args.final_updates, "min_accuracy": args.min_accuracy}
    return base.override(**{k: v for k, v in given.items() if v is not None})


def _targets(args: argparse.Namespace) -> dict[str, float]:
    """The --target-<resource> flags given: ``{"target_flops": 0.5}``."""
    from .pruner.options import target_names

    return {k: getattr(args, k) for k in target_names() if getattr(args, k, None) is not None}


def _deployment(args: argparse.Namespace):
    """Where latency is measured (--latency-*), checked against this machine."""
    from .latency import Deployment

    dep = Deployment(device=args.latency_device or args.device, batch_size=args.latency_batch, dtype=args.latency_dtype,
                     memory_format=args.latency_format, threads=args.latency_threads, runtime=args.latency_runtime)
    return dep.resolved(torch.nn.Linear(1, 1))  # the device is named: the module only stands in


def _run_dir(args: argparse.Namespace) -> tuple[Path, dict]:
    """The run directory, checked writable, and on --resume what args.json records besides the
    settings (RUN_META); the run's saved settings then replace the given ones (a flag that
    differs from them is an error, but for RESUME_MAY_CHANGE)."""
    if args.resume:
        if args.out is None:
            raise FxTaylorError("--resume needs --out RUN_DIR (the directory of the interrupted run)")
        out = Path(args.out)
        saved_file = out / RUN_ARGS
        if not saved_file.is_file():
            raise FxTaylorError(f"nothing to resume in {out}: no {RUN_ARGS} (was it started by fxtaylor prune?)")
        try:
            saved = json.loads(saved_file.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not an object")
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise FxTaylorError(f"{saved_file} is not readable ({type(e).__name__}): it holds the settings --resume needs") from None
        _same_flags(args, saved, out)
        if not (out / CHECKPOINT).is_file() and not (out / "report.json").is_file():
            raise FxTaylorError(f"nothing to resume in {out}: the run stopped before its first pruning step was saved; "
                                "start it again (the same command without --resume)")
        check_writable_dir(out, "--out")
        now = {k: getattr(args, k) for k in RESUME_MAY_CHANGE if hasattr(args, k)}
        if "workers" not in args.given:
            now.pop("workers", None)
        meta = {k: saved.pop(k) for k in RUN_META if k in saved}
        vars(args).update(saved, resume=True, out=str(out), **now)
        args.changed = {k: [saved[k], now[k]] for k in ("device", "workers") if k in saved and k in now and saved[k] != now[k]}
        return out, meta
    out = Path(args.out) if args.out else Path("runs") / f"{args.model}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    check_writable_dir(out, "--out")
    if (out / CHECKPOINT).exists() or (out / "report.json").exists():
        raise FxTaylorError(f"{out} already holds a run: pass --resume to continue it, or another --out")
    return out, {}


def _same_flags(args: argparse.Namespace, saved: dict, out: Path) -> None:
    """--resume continues a run as it was started: a flag given now must equal the saved one."""
    defaults = {a.dest: a.default for a in build_parser().commands["prune"]._actions}
    options = {a.dest: max(a.option_strings, key=len) for a in build_parser().commands["prune"]._actions if a.option_strings}
    differ = []
    for dest in sorted(args.given - set(RESUME_MAY_CHANGE) - {"out", "resume"}):
        was, now = saved.get(dest, defaults.get(dest)), getattr(args, dest)
        if not _same_value(was, now):
            differ.append(f"{options.get(dest, dest)} {_shown(now)} (the run: {_shown(was)})")
    if differ:
        raise FxTaylorError(
            f"--resume continues the run in {out} with the settings it was started with, and these flags differ from them: "
            f"{', '.join(differ)}. Leave them out (only {', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE if k != 'progress')} "
            "and --no-progress may change), or start a new run with another --out")


def _same_value(a, b) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)  # the same data folder or weights file, spelt differently
    return False


def _shown(v) -> str:
    return "(not given)" if v is None else str(v)


def _start(out: Path, args: argparse.Namespace, meta: dict, timings: dict) -> None:
    """args.json: the settings --resume reuses, the command line, and the timings of the parts
    outside the pruning loop; a resume appends its own record."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FxTaylorError(f"cannot create --out {out}: {e.strerror or e}") from e
    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS + ("changed",) and k not in RUN_META}
    if args.resume:
        record = {**settings, **meta, "resumes": [*meta.get("resumes", []), {**_resume_record(args), "setup_s": timings["setup_s"]}]}
    else:
        record = {**settings, "argv": args.argv, "timings": timings}
    atomic_write(out / RUN_ARGS, json.dumps(record, indent=2).encode())


def _resume_record(args: argparse.Namespace) -> dict:
    """A resume as the report records it: its command line and the flags it changed."""
    rec = {"argv": args.argv}
    if getattr(args, "changed", None):
        rec["changed"] = args.changed
    return rec


def _unstart(out: Path, remove_dir: bool) -> None:
    """Remove what a run that stopped before its first checkpoint wrote: its args.json, and the
    directory if it made it and nothing else is in it."""
    try:
        (out / RUN_ARGS).unlink(missing_ok=True)
        if remove_dir and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    except OSError:
        pass


def inspect(args: argparse.Namespace) -> int:
    from . import models
    from .cost import FlopsCost
    from .graph import trace
    from .graph.atoms import PRODUCER

    from .pruner.inputs import run

    model = models.build_named(args.model)[0].eval()
    x = torch.randn(1, 3, args.input_size, args.input_size)
    run(model, x, f"a {args.input_size}×{args.input_size} image (--input-size)")  # one line if too small
    graph = trace(model, x, exact=args.exact)
    flops = FlopsCost().sync(graph, x)
    total, cost = flops.total(), flops.unit_costs()
    rows = []
    for g in graph.groups:
        producers = [m.name for m in g.members if m.kind == PRODUCER]
        state = ("prunable" + (" (inexact)" if g.inexact else "") if g.prunable
                 else ("frozen: " + g.frozen[0] if g.frozen else "at minimum"))
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
    print(_reachable(model, x, graph, flops, args))
    if len(graph.modes) > 1:
        print("traced in eval and train mode (the graphs differ): groups are their union")
    if graph.partial is not None:
        print(graph.partial.describe())
    return 0


def _reachable(model: torch.nn.Module, x: torch.Tensor, graph, flops, args: argparse.Namespace) -> str:
    """What pruning can remove of each counted resource (and of the latency, with
    --latency-table), exact and with --inexact: the share the prunable groups carry. A target
    below it is refused."""
    from .cost import RESOURCES, LatencyCost
    from .graph import trace
    from .latency import Deployment

    other = trace(model, x, exact=not args.exact)
    inexact = other if args.exact else graph
    here = Deployment().resolved(model)
    shares = {}
    for r in RESOURCES.values():
        if isinstance(flops, r):
            shares[r.label] = [flops.reachable(), r().sync(other, x).reachable()]
        elif not r.measured:
            shares[r.label] = [r.for_run(here, progress=False).sync(g, x).reachable() for g in (graph, other)]
        elif r is LatencyCost and args.latency_table:  # measured: only its tables can say
            from .latency import LatencyModel

            table = LatencyModel.load(args.latency_table, model, x)
            shares[f"{r.label} (predicted)"] = [LatencyCost(table=table).sync(g, x).reachable() for g in (graph, other)]
    if not args.exact:
        shares = {k: v[::-1] for k, v in shares.items()}
    parts = [f"{v[0]:.1%} of the {k}" for k, v in shares.items()]
    line = "reachable: pruning can remove " + " and ".join(parts) + " exactly"
    if any(g.inexact for g in inexact.groups):
        line += "; with --inexact, " + " and ".join(f"{v[1]:.1%}" for v in shares.values())
    else:
        line += " (--inexact opens nothing here)"
    return line + " (a target below 1 − reachable is refused)"


def main(argv: list[str] | None = None) -> int:
    """The command. Every error a user can cause ends as one line, ``fxtaylor: error: ...``,
    exit status 2 (1 for an unexpected one); ``--debug`` or FXTAYLOR_DEBUG=1 adds the traceback."""
    # torchvision's model code still calls torch.jit.script; torch 2.14 deprecates it loudly
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv, args.given = argv, _given(argv)
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("\nfxtaylor: interrupted; `fxtaylor prune --resume --out RUN_DIR` continues a pruning run", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            traceback.print_exc()
        print(f"fxtaylor: error: {_one_line(e, debug)}", file=sys.stderr)
        return 2 if isinstance(e, (FxTaylorError, OSError, MemoryError)) else 1


def _one_line(e: BaseException, debug: bool) -> str:
    if isinstance(e, FxTaylorError):
        return message(e)
    if isinstance(e, OSError):  # a disk that is full, a file that cannot be read
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return f"{e.strerror or message(e)}{where}"
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return f"out of memory ({message(e)}): use a smaller --batch-size or --input-size"
    hint = "" if debug else f"; `--debug` (or {DEBUG_ENV}=1) shows the traceback"
    return f"unexpected {type(e).__name__}: {message(e)}{hint}"


def _given(argv: list[str]) -> set[str]:
    """The settings the command line names explicitly (not left at their defaults): what a
    resume must compare with the run's saved ones."""
    parser = build_parser()
    for sub in (parser, *parser.commands.values()):
        for action in sub._actions:
            if action.dest != "help":
                action.default = argparse.SUPPRESS
    try:
        return set(vars(parser.parse_args(argv))) - {"func", "command"}
    except SystemExit:  # parsed once already: cannot happen
        return set()


if __name__ == "__main__":
    sys.exit(main())
