"""`imagenet18`: the seed's commands (train.py, replicate_imagenet.py) as Prefect flow runs.

    imagenet18 demo                              # the whole DAG on this machine, demo data, no cloud account
    imagenet18 run --machines 16 --spot          # the seed's train.py
    imagenet18 plan --machines 16 --backend aws  # what a run would create and cost; creates nothing
    imagenet18 doctor --backend aws              # is this account ready for a run? checks, creates nothing
    imagenet18 smoke --backend aws               # a first small run: 2 cheap GPU machines, a few dollars, a report
    imagenet18 replicate --replicas 16 [--delete]
    imagenet18 snapshot --from s3://bucket/imagenet  # the dataset snapshot replicas are made from (aws)
    imagenet18 cleanup                           # what the scheduled cleanup does, now
    imagenet18 serve                             # serve the deployments (needs `prefect server start`)
    imagenet18 tensorboard [--run RUN]           # TensorBoard over runs' logs, on 127.0.0.1 only
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from types import UnionType
from typing import Literal, Union, get_args, get_origin

import httpx
from pydantic import TypeAdapter, ValidationError

from deployments.api_server import APIServerError, api_for_flows, unanswered_api
from tasks.backends import backend_class, takes_aws_options
from tasks.backends.base import BackendError, InputError
from tasks.parameters import BackendName, KeepHours, MachineCount, ReplicaCount, RunParameters, Switch

MACHINE_COUNTS = get_args(MachineCount)
SET_OTHERWISE = {"dry_run", "aws"}  # by the plan command, and by the aws backend's options
CLI_DEFAULTS = {"machines": None}  # not given: 16 on aws (the seed's), else the model's 2 (_flow_parameters)
PREFECT_ENVIRONMENT = {
    "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # the backends' own logs (AWS retries, capacity moves) reach the flow run's log in the UI too
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,trainer", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}


def _run_options(parser: argparse.ArgumentParser) -> None:
    """An option for each of RunParameters' fields but those set another way, with the field's name, type,
    choices (a Literal's) and default, and its description as help; its constraints apply as the model is made."""
    for name, field in RunParameters.model_fields.items():
        if name in SET_OTHERWISE:
            continue
        flag, help_text = f"--{name.replace('_', '-')}", field.description.replace("%", "%%")
        value_type = _option_type(field.annotation)
        if value_type is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        if value_type == Switch:
            _switch(parser, flag, name, field.default, help_text)
            continue
        choices = get_args(value_type) if get_origin(value_type) is Literal else None
        parser.add_argument(flag, type=type(choices[0]) if choices else value_type, choices=choices, help=help_text,
                            default=CLI_DEFAULTS.get(name, field.default))
    _aws_options(parser)


def _switch(parser: argparse.ArgumentParser, flag: str, name: str, default: str, help_text: str) -> None:
    """`--OPTION` is on, `--no-OPTION` off, neither the default (auto)."""
    either = parser.add_mutually_exclusive_group()
    either.add_argument(flag, dest=name, action="store_const", const="on", default=default,
                        help=f"{help_text} (default: {default})")
    either.add_argument(f"--no-{flag.removeprefix('--')}", dest=name, action="store_const", const="off",
                        help="off, whatever the plan estimates")


def _option_type(annotation: object) -> object:
    """`X | None` is X: an option not given is None."""
    if get_origin(annotation) in (Union, UnionType):
        given = [arg for arg in get_args(annotation) if arg is not type(None)]
        assert len(given) == 1, f"no CLI option for a union of {given}"
        return given[0]
    return annotation


def _aws_options(parser: argparse.ArgumentParser) -> None:
    aws = parser.add_argument_group("aws backend")
    aws.add_argument("--region", help="default: AWS_REGION, else boto3's (AWS_DEFAULT_REGION, the AWS config "
                                      "file's region), else us-east-1")
    aws.add_argument("--zone", dest="availability_zone", help="default: the first zone offering the type")
    aws.add_argument("--other-instance-types", type=_comma_separated, metavar="TYPE,...",
                     help="when AWS has no capacity for the type, run every machine as the next of these")
    aws.add_argument("--other-zones", dest="other_availability_zones", type=_comma_separated, metavar="ZONE,...",
                     help="when AWS has no capacity in the zone for any allowed type, move to the next of these")
    aws.add_argument("--ami", help="default: the Deep Learning Base AMI")
    aws.add_argument("--subnet", dest="subnet_id", help="use this subnet instead of making a network")
    aws.add_argument("--bucket", help="results bucket (default imagenet18-<account>-<region>)")
    aws.add_argument("--ssh-cidr", help="allow ssh from this CIDR (default: SSM sessions only)")
    aws.add_argument("--volume-type", choices=("io1", "io2", "gp3"))
    aws.add_argument("--iops", type=int)
    aws.add_argument("--throughput", dest="throughput_mbps", type=int, metavar="MIB_S",
                     help="gp3 only: at most 0.25 MiB/s per IOPS (default 1000)")


AWS_OPTIONS = {"region": "--region", "availability_zone": "--zone", "other_instance_types": "--other-instance-types",
               "other_availability_zones": "--other-zones", "ami": "--ami", "subnet_id": "--subnet",
               "bucket": "--bucket", "ssh_cidr": "--ssh-cidr", "volume_type": "--volume-type", "iops": "--iops",
               "throughput_mbps": "--throughput"}  # AwsOptions' fields, and their flags


def _comma_separated(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _aws(args: argparse.Namespace) -> dict:
    """The aws backend's options given; refused for a command on another backend, which would drop them."""
    given = {name: getattr(args, name) for name in AWS_OPTIONS if getattr(args, name) is not None}
    backend = getattr(args, "backend", "aws")
    if given and not takes_aws_options(backend):
        raise InputError(f"{', '.join(AWS_OPTIONS[name] for name in given)}: the aws backend's, which a {backend} "
                         "run would ignore; add --backend aws, or leave them out")
    return given


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="imagenet18", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = root.add_subparsers(dest="command", required=True)
    _run_options(sub.add_parser("demo", help="the whole DAG locally on the demo dataset"))
    _run_options(sub.add_parser("run", help="train (the seed's train.py)"))
    _run_options(sub.add_parser("plan", help="validate and price a run; create nothing"))
    replicate = sub.add_parser("replicate", help="make or delete dataset replicas")
    replicate.add_argument("--replicas", type=int, default=16)
    replicate.add_argument("--backend", choices=get_args(BackendName), default="local")
    replicate.add_argument("--dataset")
    replicate.add_argument("--keep-hours", type=float, default=24.0)
    replicate.add_argument("--delete", action="store_true")
    replicate.add_argument("--instance-type", help="the zone is chosen where this type is offered (aws)")
    _aws_options(replicate)
    snapshot = sub.add_parser("snapshot", help="make the dataset snapshot (aws) from a dataset at an s3:// URL")
    snapshot.add_argument("--from", dest="source", required=True, help="s3://bucket/imagenet (with -sz/ copies)")
    snapshot.add_argument("--name", default="imagenet18-backup", help="the snapshot's Name and description")
    snapshot.add_argument("--sizes", type=int, nargs="*", default=[160, 352], help="the -sz/<px> copies to include")
    snapshot.add_argument("--max-hours", type=float,
                          help="the builder ends itself after this: the copy and the snapshot together (6 unless "
                               "given, at most 48)")
    snapshot.set_defaults(backend="aws")
    _aws_options(snapshot)
    doctor = sub.add_parser("doctor", help="check this account for a run (aws): one table, nothing created")
    doctor.add_argument("--backend", choices=("aws",), default="aws")
    doctor.add_argument("--instance-type", help="default: the run's default type")
    doctor.add_argument("--machines", type=int, choices=MACHINE_COUNTS, default=16)
    doctor.add_argument("--spot", action="store_true", help="check spot quotas and prices for the run")
    _aws_options(doctor)
    smoke = sub.add_parser("smoke", help="a first small run (aws): 2 cheap GPU machines, the demo dataset, teardown "
                                         "verified, a report to paste into an issue")
    smoke.add_argument("--backend", choices=("aws",), default="aws")
    smoke.add_argument("--instance-type", help="default: the cheapest type the machines' torch build runs")
    smoke.add_argument("--on-demand", action="store_true", help="never spot (default: spot where the quota allows)")
    smoke.add_argument("--budget-usd", type=float, default=5.0, help="refuse to start when the plan costs more")
    smoke.add_argument("--max-hours", type=float, default=0.5, help="the machines shut down after this")
    smoke.add_argument("--schedule", default="cpu-demo")
    smoke.add_argument("--epochs", type=int)
    _aws_options(smoke)
    sub.add_parser("cleanup", help="delete what finished or expired runs left")
    sub.add_parser("serve", help="serve imagenet18/full, the replicate flow and the scheduled cleanup")
    tensorboard = sub.add_parser("tensorboard", help="TensorBoard over runs' logs, on 127.0.0.1 only")
    tensorboard.add_argument("--run", help="one run: its folder, name or a prefix of its id (default: all runs)")
    tensorboard.add_argument("--logdir", help="a folder or fsspec URL (s3://...) of runs (default: the backend's)")
    tensorboard.add_argument("--port", type=int, help="the local port (default: 6006, or the next free one)")
    tensorboard.add_argument("--backend", choices=get_args(BackendName), default="local")
    tensorboard.add_argument("--via", choices=("bucket", "head"), default="bucket",
                             help="aws: read s3://<bucket>/runs/ from here (bucket), or serve the run's EFS folder "
                                  "on its machine 0 through an SSM or ssh port forward (head)")
    tensorboard.add_argument("--remote-port", type=int, default=6006, help="TensorBoard's port on machine 0 (head)")
    _aws_options(tensorboard)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for name, value in PREFECT_ENVIRONMENT.items():  # before Prefect is imported, and inherited by served runs
        os.environ.setdefault(name, value)
    try:
        with api_for_flows(FLOW_MODULES[args.command]) if args.command in FLOW_MODULES else nullcontext():
            return COMMANDS[args.command](args)
    except (InputError, BackendError, ValidationError, APIServerError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run's resources were torn down", file=sys.stderr)
        return 130
    except RuntimeError as exc:  # Prefect's, where a flow could not start: its API does not answer
        if not str(exc).startswith("Failed to reach API") or (unanswered := unanswered_api()) is None:
            raise
        print(f"error: {unanswered}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:  # the flow's own state, at its start or end: artifacts and task states wait
        print(f"error: the Prefect API did not answer ({type(exc).__name__}: {exc}), so this run's state is not "
              "recorded there; a run that began has torn down what it made all the same (teardown needs no API), and "
              "its log is above", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)


def _flow_parameters(args: argparse.Namespace, dry_run: bool) -> dict:
    given = {name: getattr(args, name) for name in RunParameters.model_fields if name not in SET_OTHERWISE}
    return {**given, "machines": args.machines or backend_class(args.backend).default_machines, "dry_run": dry_run,
            "aws": _aws(args) or None}


def _run(args: argparse.Namespace) -> int:
    from flows.imagenet18 import imagenet18
    from tasks.planning import plan_run
    from tasks.stages import TrainingError

    parameters = _flow_parameters(args, dry_run=args.command == "plan")
    plan_run(RunParameters(**parameters), run_id="preflight", run_name="preflight")  # bad input: no flow run
    try:
        result = imagenet18(**parameters)
    except TrainingError as exc:  # torn down; the cause in one line, the machines' logs have the rest
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result.get("dry_run"):
        print(f"{result['run_name']}: would cost ${result['hourly_usd']:,.2f}/h, at most "
              f"${result['total_usd']:,.2f}; nothing was created\n{result['compile']}")
        return 0
    reached = (f"{result['target']:.1f}% {result['target_metric']} at epoch {result['target_epoch']} "
               f"({result['target_hours'] * 60:.1f} min)" if result["target_epoch"] is not None
               else f"{result['target']:.1f}% {result['target_metric']} not reached")
    print(f"{result['run_name']}: top-1 {result['top1']:.3f}, top-5 {result['top5']:.3f} after "
          f"{result['epochs']} epochs ({result['hours'] * 60:.1f} min); {reached}")
    print(f"logs and TensorBoard events: {result['storage']}   ({result['tensorboard']})")
    print(f"loss and accuracy curves: {result['storage']}/curves.png")
    return 0


def _replicate(args: argparse.Namespace) -> int:
    from flows.replicate import replicate
    from tasks.backends import get_backend

    for name, kind in (("replicas", ReplicaCount), ("keep_hours", KeepHours)):  # bad input: no flow run
        try:
            TypeAdapter(kind).validate_python(getattr(args, name))
        except ValidationError as exc:
            raise InputError(f"{name}: {exc.errors()[0]['msg']}") from None
    if args.dataset and not args.delete:
        get_backend(args.backend, _aws(args)).check_replicas(RunParameters(
            backend=args.backend, dataset=args.dataset).resolved_dataset)
    ids = replicate(replicas=args.replicas, backend=args.backend, dataset=args.dataset,
                    keep_hours=args.keep_hours, delete=args.delete, instance_type=args.instance_type,
                    aws=_aws(args))
    print(f"{'deleted' if args.delete else 'ready'}: {len(ids)} replica(s)")
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from flows.snapshot import snapshot

    snapshot_id = snapshot(source=args.source, name=args.name, sizes=args.sizes, aws=_aws(args),
                           **({} if args.max_hours is None else {"max_hours": args.max_hours}))
    print(f"snapshot {snapshot_id} ({args.name}) is ready: imagenet18 run --backend aws --dataset {args.name}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from tasks.backends.aws import AwsOptions, catalog, doctor

    checks = doctor.diagnose(AwsOptions(**_aws(args)), args.instance_type or catalog.DEFAULT_INSTANCE_TYPE,
                             args.machines, args.spot)
    print(doctor.table(checks))
    return 1 if doctor.failed(checks) else 0


def _smoke(args: argparse.Namespace) -> int:
    from flows.smoke import MACHINES, NotReady, plan_smoke, run_smoke

    try:
        plan = plan_smoke(_aws(args), args.instance_type, args.on_demand, args.budget_usd, args.max_hours,
                          args.schedule, args.epochs)
    except NotReady as exc:
        print(exc.table, file=sys.stderr)
        raise
    print(f"{plan.name}: {MACHINES} x {plan.kind.name}, {plan.market}, at most ${plan.estimate_usd:,.2f}", flush=True)
    with api_for_flows("flows.imagenet18"):  # after the checks: bad input starts no API server
        if unanswered := unanswered_api():  # before the upload and the snapshot build, made outside any flow
            raise APIServerError(unanswered)
        report = run_smoke(plan)
    print(f"{report.markdown}\nthis report: {report.path}")
    return 0 if report.passed else 1


def _cleanup(args: argparse.Namespace) -> int:
    from flows.cleanup import cleanup

    removed = cleanup()
    print("; ".join(f"{name}: removed {len(ids)}" for name, ids in removed.items()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from deployments.serve import serve_all

    serve_all()
    return 0


def _tensorboard(args: argparse.Namespace) -> int:
    import shlex

    from tasks.tensorboard import interrupt_on_termination, open_session

    interrupt_on_termination()
    try:
        with open_session(args.backend, args.via, args.logdir, args.run, args.port, args.remote_port,
                          _aws(args)) as session:
            if session.manual_forward:
                command, needs = session.manual_forward
                print(f"TensorBoard is starting on machine 0 ({session.logdir}), on its 127.0.0.1 only. The port "
                      f"forward to it needs {needs}, not found here: install that, then run this in another "
                      f"terminal (it listens on 127.0.0.1:{session.port}):\n  {shlex.join(command)}", flush=True)
            print(f"TensorBoard: {session.wait_until_serving()}   ({session.logdir}; Ctrl-C stops it)", flush=True)
            print(f"error: {session.wait()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("TensorBoard stopped", file=sys.stderr)
        return 0


FLOW_MODULES = {"demo": "flows.imagenet18", "run": "flows.imagenet18", "plan": "flows.imagenet18",
                "replicate": "flows.replicate", "snapshot": "flows.snapshot", "cleanup": "flows.cleanup"}
COMMANDS = {"demo": _run, "run": _run, "plan": _run, "replicate": _replicate, "snapshot": _snapshot,
            "doctor": _doctor, "smoke": _smoke, "cleanup": _cleanup, "serve": _serve, "tensorboard": _tensorboard}

if __name__ == "__main__":
    sys.exit(main())
