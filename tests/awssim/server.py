"""Process entry: moto's server app wrapped by our middleware on 127.0.0.1, with the machine player beside it.

    python -m tests.awssim --root DIR [--port 0]

prints `awssim ready http://127.0.0.1:PORT` on stdout once it accepts calls, then serves until SIGTERM, which
also kills every played process."""

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

# AWS-managed IAM policies (AmazonSSMManagedInstanceCore) exist on AWS; moto loads them only when asked.
os.environ.setdefault("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
os.environ.setdefault("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # images.add_images adds the images tests launch

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from . import backends
from .catalogue import extend_catalogue
from .consistency import Consistency
from .control import Control
from .faults import Faults
from .images import add_images
from .middleware import AwsSimApp
from .moto_fixes import (
    fix_address_reassociation,
    fix_default_subnets_only_in_the_default_vpc,
    fix_default_vpc_way_out,
    fix_file_system_already_exists,
    fix_instances_start_pending,
    fix_launch_interfaces,
    fix_managed_policies_in_aws_partition_only,
    fix_profile_on_every_machine,
    fix_reboots_reach_the_machine,
    fix_route_state,
    fix_send_command_targets,
    fix_service_linked_roles,
    fix_snapshots_take_time,
    fix_status_checks_can_fail,
    fix_termination_takes_time,
)
from .bucket_settling import fix_new_buckets_settle
from .local_zones import fix_local_zones
from .placement import PlacementGroups
from .player import Player
from .quotas import Quotas
from .encryption import fix_ebs_encryption
from .regions import fix_describe_regions
from .s3_keys import fix_aws_managed_keys
from .storage import ContentStore
from .throttle import SsmThrottle
from .volume_states import fix_volumes_take_time

REPO = Path(__file__).resolve().parents[2]  # the checkout holding tests/awssim: /opt/imagenet18 on a machine
DUMMY_AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.awssim", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="disk contents, command output")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log

    extend_catalogue()
    add_images()
    fix_send_command_targets()
    fix_default_vpc_way_out()
    fix_default_subnets_only_in_the_default_vpc()
    fix_launch_interfaces()
    fix_route_state()
    fix_address_reassociation()
    fix_profile_on_every_machine()
    fix_describe_regions()
    fix_ebs_encryption()
    fix_aws_managed_keys()
    fix_service_linked_roles()
    fix_file_system_already_exists()
    fix_managed_policies_in_aws_partition_only()
    fix_reboots_reach_the_machine()
    fix_status_checks_can_fail()
    faults, placement, store, quotas = Faults(backends.of_run), PlacementGroups(), ContentStore(root), Quotas()
    player, throttle = Player(root, REPO, store), SsmThrottle()
    fix_instances_start_pending(lambda: player.pending_s)
    fix_termination_takes_time(lambda: player.shutting_down_s)
    fix_snapshots_take_time(lambda: player.snapshot_pending_s)
    fix_volumes_take_time(lambda: player.volume_creating_s)
    fix_new_buckets_settle(lambda: player.bucket_settling_s)
    fix_local_zones(lambda account, region: region in player.local_zone_regions)
    consistency = Consistency()
    app = AwsSimApp(DomainDispatcherApplication(create_backend_app), faults, placement, player, quotas, throttle,
                    consistency, Control(root, faults, placement, player, store, quotas, throttle, consistency))
    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=MotoRequestHandler)
    endpoint = f"http://127.0.0.1:{server.server_port}"
    # Played commands inherit this environment: they reach the simulator, never real AWS.
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(DUMMY_AWS_ENV)  # never a developer's real keys
    os.environ["AWS_ENDPOINT_URL"] = endpoint

    def stop(signum: int, frame: FrameType | None) -> None:
        player.reset()
        sys.exit(0)

    def exit_with_parent(parent: int) -> None:
        """A test run killed outright (SIGKILL) can't stop us: notice it and go, taking the played processes."""
        while os.getppid() == parent:
            time.sleep(1)
        player.reset()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    player.start()
    print(f"awssim ready {endpoint}", flush=True)
    os.dup2(2, 1)  # later prints go to the log, not to a pipe nobody reads
    server.serve_forever()
