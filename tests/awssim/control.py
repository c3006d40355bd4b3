"""Control endpoints under /_awssim/ on the simulator's port: faults, spot interruption, quotas, reset, played
commands, the SSM agents' registration delay, the regions that hold anything tagged with a run, another account's
bucket."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

from moto.ec2.models.instances import StateReason
from moto.moto_api._internal import moto_api_backend
from moto.s3.models import s3_backends

from . import backends, bucket_settling
from .consistency import Consistency
from .errors import Response
from .faults import Faults
from .placement import PlacementGroups
from .player import Player
from .quotas import Quotas
from .storage import ContentStore
from .throttle import SsmThrottle

Handler = Callable[[dict[str, Any]], Any]


def _json(status: int, body: Any) -> Response:
    return Response(status, [("Content-Type", "application/json")], json.dumps(body).encode())


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Control:
    def __init__(self, root: Path, faults: Faults, placement: PlacementGroups, player: Player,
                 store: ContentStore, quotas: Quotas, throttle: SsmThrottle, consistency: Consistency) -> None:
        self.root, self.faults, self.placement, self.player, self.store = root, faults, placement, player, store
        self.quotas, self.throttle, self.consistency = quotas, throttle, consistency
        self.routes: dict[tuple[str, str], Handler] = {
            ("POST", "/_awssim/faults"): lambda body: self.faults.add(body["rules"], body.get("seed")),
            ("DELETE", "/_awssim/faults"): lambda body: self.faults.clear(body.get("label")),
            ("GET", "/_awssim/faults"): lambda body: self.faults.report(),
            ("POST", "/_awssim/quotas"): lambda body: self.quotas.set(body["values"]),
            ("POST", "/_awssim/interrupt"): lambda body: self.interrupt(body["instance_id"]),
            ("POST", "/_awssim/impair"): lambda body: self.player.impair(body["instance_id"], body["check"],
                                                                       float(body["ago_s"])),
            ("POST", "/_awssim/launch-ends"): lambda body: self.player.end_launches(
                body["instance_type"], int(body["machines"]), body["code"]),
            ("POST", "/_awssim/reset"): lambda body: self.reset(),
            ("GET", "/_awssim/played"): lambda body: self.player.played(),
            ("GET", "/_awssim/machines"): lambda body: self.player.machines(),
            ("GET", "/_awssim/launches"): lambda body: self.placement.launches(),
            ("GET", "/_awssim/tagged-regions"): lambda body: backends.tagged_regions(),
            ("POST", "/_awssim/agent"): lambda body: setattr(self.player, "agent_delay_s", float(body["delay_s"])),
            ("POST", "/_awssim/pending"): lambda body: setattr(self.player, "pending_s", float(body["pending_s"])),
            ("POST", "/_awssim/boot"): lambda body: setattr(self.player, "boot_s", float(body["boot_s"])),
            ("POST", "/_awssim/reboot"): lambda body: setattr(self.player, "reboot_s", float(body["reboot_s"])),
            ("POST", "/_awssim/shutting-down"): lambda body: setattr(self.player, "shutting_down_s",
                                                                     float(body["shutting_down_s"])),
            ("POST", "/_awssim/snapshot-pending"): lambda body: setattr(self.player, "snapshot_pending_s",
                                                                        float(body["pending_s"])),
            ("POST", "/_awssim/volume-creating"): lambda body: setattr(self.player, "volume_creating_s",
                                                                       float(body["creating_s"])),
            ("POST", "/_awssim/bucket-settling"): lambda body: setattr(self.player, "bucket_settling_s",
                                                                       float(body["settling_s"])),
            ("POST", "/_awssim/local-zone"): lambda body: self.player.local_zone_regions.add(body["region"]),
            ("POST", "/_awssim/block-public-access"): lambda body: self.player.public_access.turn_on(
                body["region"], body["mode"], body["exclusions"], body["exclusions_allowed"]),
            ("POST", "/_awssim/unreachable"): lambda body: self.player.unreachable_hosts.update(body["hosts"]),
            ("POST", "/_awssim/s3-round-trip"): lambda body: setattr(self.player.s3_reads, "round_trip_s",
                                                                   float(body["round_trip_s"])),
            ("GET", "/_awssim/s3-reads"): lambda body: {"most_at_once": self.player.s3_reads.most_at_once},
            ("POST", "/_awssim/guardduty-runtime-monitoring"): lambda body: self.player.guardduty.turn_on(
                body["region"], body.get("lagging", False)),
            ("POST", "/_awssim/placement"): lambda body: setattr(self.placement, "changing_s",
                                                                float(body["changing_s"])),
            ("POST", "/_awssim/consistency"): lambda body: setattr(self.consistency, "window_s",
                                                                  float(body["window_s"])),
            ("POST", "/_awssim/profile-propagation"): lambda body: setattr(
                self.consistency, "profile_propagation_s", float(body["propagation_s"])),
            ("POST", "/_awssim/iam-propagation"): lambda body: setattr(
                self.consistency, "iam_propagation_s", float(body["propagation_s"])),
            ("POST", "/_awssim/initialization-report"): lambda body: setattr(
                self.player.initializations, "report_delay_s", float(body["delay_s"])),
            ("POST", "/_awssim/seed"): lambda body: self.seed(body["snapshot_id"], Path(body["from_dir"])),
            ("POST", "/_awssim/foreign-bucket"): lambda body: self.foreign_bucket(
                body["bucket"], body["account"], body["region"], body.get("policy"), body.get("requester_pays", False),
                body.get("objects", {}), body.get("objects_encryption")),
        }

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        handler = self.routes.get((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        length = int(environ.get("CONTENT_LENGTH") or 0)
        try:
            if handler is None:
                raise ControlError(404, f"no control endpoint {environ['REQUEST_METHOD']} {environ['PATH_INFO']}")
            answer = _json(200, handler(json.loads(environ["wsgi.input"].read(length) or b"{}")))
        except (KeyError, TypeError, ValueError) as error:  # a malformed request
            answer = _json(400, {"error": repr(error)})
        except ControlError as error:
            answer = _json(error.status, {"error": str(error)})
        return answer.send(start_response)

    def interrupt(self, instance_id: str) -> None:
        """Terminate an instance the way a spot interruption does, and kill its processes."""
        instance = backends.find_instance(instance_id)
        if instance is None:
            raise ControlError(404, f"no instance {instance_id}")
        instance.terminate(reason=StateReason("Server.SpotInstanceTermination: Spot instance termination",
                                              "Server.SpotInstanceTermination"))
        self.player.tick()

    def reset(self) -> None:
        """Everything back to a fresh start: moto's state, our stores, faults, processes and disk contents."""
        self.faults.clear()  # first: held calls end with their errors, before the state they would touch goes
        with self.player.paused():
            self.player.reset()
            moto_api_backend.reset()
            self.placement.clear()
            self.quotas.reset()
            self.throttle.reset()
            self.consistency.reset()
            self.store.wipe()
            for folder in ("commands", "instances"):
                shutil.rmtree(self.root / folder, ignore_errors=True)

    @staticmethod
    def foreign_bucket(name: str, account: str, region: str, policy: str | None, requester_pays: bool,
                       objects: dict[str, str], objects_encryption: str | None) -> None:
        """A bucket of another account (whose keys no test holds), with its bucket policy if given, Requester Pays
        if asked, and the objects (key -> text) its owner put there, under that server-side encryption (aws:kms:
        the owner's AWS managed key) if given."""
        s3 = s3_backends[account]["aws"]
        bucket = s3.create_bucket(name, region)
        bucket_settling.settled(bucket)
        if policy:
            s3.put_bucket_policy(name, policy.encode())
        if requester_pays:
            bucket.payer = "Requester"
        for key, text in objects.items():
            s3.put_object(name, key, text.encode(), encryption=objects_encryption)

    def seed(self, snapshot_id: str, source: Path) -> None:
        if not any(snapshot_id in ec2.snapshots for _, _, ec2 in backends.ec2_all()):
            raise ControlError(404, f"no snapshot {snapshot_id}")
        if not source.is_dir():
            raise ControlError(400, f"{source} is not a directory")
        self.store.seed_snapshot(snapshot_id, source)
