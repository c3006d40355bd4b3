"""`python -m trainer {train,prepare,demo-data,schedules}`: the command line every machine runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from trainer import checkpoint, layout, model, schedule, train

USER_ERRORS = (schedule.ScheduleError, layout.DataError, checkpoint.CheckpointError, ValueError)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a ResNet with a schedule (alone or under torchrun)")
    p.add_argument("data", help="dataset root (ROOT/{train,validation}/<class>/*.JPEG, resized copies at "
                                "ROOT-sz/<px>), or an fsspec URL (s3://..., file://...) synced to local disk")
    p.add_argument("--schedule", default="cpu-demo",
                   help=f"built-in name ({', '.join(schedule.builtin_names())}), a .toml file, or auto (derived "
                        "from the dataset's own images: sizes, epochs, batch; trainer/recipe.py)")
    p.add_argument("--logdir", type=Path, help="this run's folder (default ~/imagenet18-runs/RUN_NAME)")
    p.add_argument("--run-name", help="default: SCHEDULE-YYYYmmdd-HHMMSS")
    p.add_argument("--arch", help="override the schedule's model (resnet10/18/34/50/101)")
    p.add_argument("--target", type=float, help="accuracy %% whose first epoch is reported (default: the "
                                                 "schedule's; the seed's is 93%% top-5)")
    p.add_argument("--target-metric", choices=("top5", "top1"), help="default: the schedule's")
    p.add_argument("--stop-at-target", action="store_true", help="end the run at the target's epoch")
    p.add_argument("--epochs", type=int, help="stop after this many epochs (default: the schedule's)")
    p.add_argument("--checkpoint-dir", help="folder or fsspec URL (default LOGDIR/checkpoints)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints; 0: none")
    p.add_argument("--resume", help="checkpoint file, folder or URL to continue from")
    p.add_argument("--auto-resume", action="store_true",
                   help="continue from --checkpoint-dir when it holds a checkpoint (spot restarts)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast on GPUs and on CPUs with bf16 support")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on with bf16")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (each image size compiles once; see BENCHMARKS.md)")
    p.add_argument("--compile-mode", choices=model.COMPILE_MODES, default="default",
                   help="torch.compile's mode with --compile: reduce-overhead replays the step as CUDA graphs")
    p.add_argument("--decode", choices=("auto", "workers", "device"), default="auto",
                   help="where JPEGs are decoded and cropped: in the loader workers, or a batch at a time on the "
                        "training device (nvJPEG on a GPU; slower than the workers so far, see BENCHMARKS.md); "
                        "auto: workers")
    p.add_argument("--workers", type=int, help="loader worker processes per training process")
    p.add_argument("--threads", type=int, help="CPU threads per training process")
    p.add_argument("--print-freq", type=int, default=10, help="batches between console lines")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=train.DEFAULT_CACHE)
    p.add_argument("--heartbeat-seconds", type=float, default=30.0)


def _prepare_parser(sub) -> None:
    p = sub.add_parser("prepare", help="make the ROOT-sz/<px> resized copies the schedules read")
    p.add_argument("root", type=Path)
    p.add_argument("--sizes", type=int, nargs="+", default=[160, 352])
    p.add_argument("--workers", type=int, help="default: all cores")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo-data", help="make the deterministic demo dataset (no download)")
    p.add_argument("root", type=Path)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=260)
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-prepare", action="store_true", help="skip making the -sz/160 and -sz/352 copies")


def _sync_parser(sub) -> None:
    p = sub.add_parser("sync", help="copy a dataset at an fsspec URL (and its -sz copies) to a folder")
    p.add_argument("url", help="e.g. s3://bucket/imagenet")
    p.add_argument("destination", type=Path, help="the copy of URL; URL-sz/<px> goes to DESTINATION-sz/<px>")
    p.add_argument("--sizes", type=int, nargs="*", default=[], help="resized copies to fetch too, e.g. 160 352")


def _mirror_parser(sub) -> None:
    p = sub.add_parser("mirror", help="copy a run folder's metrics, logs and events to an fsspec URL as they change")
    p.add_argument("source", type=Path)
    p.add_argument("url")
    p.add_argument("--every", type=float, default=10.0, help="seconds between copies")
    p.add_argument("--until-exits", type=int, metavar="N",
                   help="follow until N exit codes are in SOURCE/exit/ (default: copy once and stop)")
    p.add_argument("--exit-pattern", default="*", help="which files in SOURCE/exit/ count, e.g. 'train-*'")
    p.add_argument("--only", nargs="+", help="copy just these files (paths relative to SOURCE), once")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m trainer", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _prepare_parser(sub)
    _demo_parser(sub)
    _sync_parser(sub)
    _mirror_parser(sub)
    sub.add_parser("schedules", help="list the built-in schedules")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    options = {k: v for k, v in vars(args).items() if k != "command"}
    summary = train.run(train.TrainConfig(**options))
    return 0 if summary.epochs else 1


def _prepare(args: argparse.Namespace) -> int:
    from trainer.prepare import prepare

    report = prepare(args.root, args.sizes, args.workers)
    logging.getLogger("trainer").info("%s", report)
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from trainer.demo_data import make_demo_dataset
    from trainer.prepare import prepare

    root = make_demo_dataset(args.root, args.classes, args.train_per_class, args.val_per_class, args.seed)
    if not args.no_prepare:
        prepare(root)
    return 0


def _sync(args: argparse.Namespace) -> int:
    from trainer import sync

    copied = sync.sync(args.url, args.destination, ["", *(f"-sz/{size}" for size in args.sizes)])
    logging.getLogger("trainer").info("%d files copied to %s", copied, args.destination)
    return 0


def _mirror(args: argparse.Namespace) -> int:
    from trainer.mirror import Mirror, exits_written

    mirror = Mirror(args.source, args.url)
    if args.until_exits:
        mirror.follow(exits_written(args.source, args.until_exits, args.exit_pattern), args.every)
    else:
        mirror.push_until_copied([args.source / relative for relative in args.only] if args.only else None)
    return 0


def _schedules(args: argparse.Namespace) -> int:
    for name in schedule.builtin_names():
        plan = schedule.load(name)
        print(f"{name:12s} {plan.epochs:3d} epochs  {plan.arch:9s} {plan.description}")
    return 0


COMMANDS = {"train": _train, "prepare": _prepare, "demo-data": _demo_data, "schedules": _schedules, "sync": _sync,
            "mirror": _mirror}
