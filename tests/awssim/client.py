"""The test-side handle: start the simulator as a subprocess, drive its control endpoints, make boto3 clients."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from .faults import ABSENT, PRESENT

REPO = Path(__file__).resolve().parents[2]
READY = "awssim ready "
# EC2's answer to a launch while AWS verifies a new account's access to the region.
PENDING_VERIFICATION = (
    "Your request for accessing resources in this region is being validated, and you will not be able to launch "
    "additional resources in this region until the validation is complete. We will notify you by email once your "
    "request has been validated. While normally resolved within minutes, please allow up to 4 hours for this "
    "process to complete. If the issue still persists, please let us know by writing to aws-verification@amazon.com "
    "for further assistance.")


@dataclass
class AwsSim:
    endpoint: str
    root: Path
    region: str = "us-east-1"
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    _making: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def client(self, service: str, retries: dict[str, Any] | None = None, region: str | None = None) -> Any:
        """A boto3 client of this simulator with dummy keys, whatever the environment says, in `region` (default:
        the simulator's). Made once per service, retry mode and region (botocore takes a fifth of a second of CPU
        to make one) and shared: clients are thread-safe."""
        key = json.dumps([service, retries, region or self.region], sort_keys=True)
        with self._making:
            if key not in self._clients:
                self._clients[key] = boto3.session.Session(
                    aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region or self.region
                ).client(service, endpoint_url=self.endpoint, config=Config(retries=retries or {"mode": "standard"}))
            return self._clients[key]

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            f"{self.endpoint}/_awssim/{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"awssim {method} {path}: {error.read().decode()}") from None

    def reset(self) -> None:
        """Fresh moto state, no placement groups, no faults, no played processes, empty disk contents."""
        self._control("POST", "reset")

    def add_fault(self, service: str, action: str, code: str, *, message: str = "injected by awssim",
                  status: int | None = None, probability: float = 1.0, times: int | None = None,
                  match: dict[str, str] | None = None, after: int = 0, hold_s: float = 0.0,
                  seed: int | None = None, run: str | None = None, region: str | None = None,
                  label: str = "", carried_out: bool = False) -> None:
        """Make `action` of `service` fail with `code`: with `probability`, at most `times` times, after letting
        the first `after` matching calls through; `match` maps flat request params (e.g. InstanceType) to regular
        expressions they must match; `run` keeps to the calls of one run (a parameter holds its id, or names an
        EC2 resource or file system tagged with it), `region` to the calls signed for one region. With `hold_s`,
        each failing call first hangs that long, or until its rule is cleared (`clear_faults`, `reset`). With
        `carried_out`, the call is done and only its answer is the error: a 5xx or a dropped connection after AWS
        acted, which leaves the caller unable to tell. `label` names the rules `clear_faults` may clear."""
        rule = {"service": service, "action": action, "code": code, "message": message, "status": status,
                "probability": probability, "times": times, "match": match or {}, "after": after, "hold_s": hold_s,
                "run": run, "region": region, "label": label, "carried_out": carried_out}
        self._control("POST", "faults", {"rules": [rule], "seed": seed})

    def deny_pass_role(self, label: str = "") -> None:
        """These credentials may not pass a role to EC2 (iam:PassRole): every RunInstances naming an instance
        profile, dry run or not, is refused as EC2 refuses it (moto checks no PassRole)."""
        self.add_fault("ec2", "RunInstances", "UnauthorizedOperation", status=403, label=label,
                       match={"IamInstanceProfile.Name": PRESENT},
                       message="You are not authorized to perform this operation. Encoded authorization failure "
                               "message: injected-by-awssim-iam-PassRole")

    def verify_account(self, launches: int | None = None, dry_runs: bool = False, label: str = "") -> None:
        """AWS is verifying the account's access to the region, as for a new account: its next `launches`
        RunInstances (each one when None) are refused with PendingVerification, in EC2's words (users' reports of
        it, e.g. openshift/installer#1709); dry runs too with `dry_runs` (whether EC2's dry run answers it is not
        known)."""
        self.add_fault("ec2", "RunInstances", "PendingVerification", status=400, times=launches, label=label,
                       match={} if dry_runs else {"DryRun": ABSENT}, message=PENDING_VERIFICATION)

    def clear_faults(self, label: str | None = None) -> None:
        """Every rule, or only those added with `label`."""
        self._control("DELETE", "faults", None if label is None else {"label": label})

    def fault_counts(self, label: str | None = None) -> list[dict[str, Any]]:
        """Each rule as given (only those added with `label`, when given), with `seen` (matching calls) and
        `fired` (errors returned)."""
        return [rule for rule in self._control("GET", "faults") if label in (None, rule["label"])]

    def interrupt(self, instance_id: str) -> None:
        """Spot interruption: the instance terminates (Server.SpotInstanceTermination), its processes die."""
        self._control("POST", "interrupt", {"instance_id": instance_id})

    def impair(self, instance_id: str, check: str = "system", ago_s: float = 0.0) -> None:
        """The machine's hardware failed ("system") or its OS stopped answering ("instance") `ago_s` seconds ago:
        its processes end, its commands stay in progress, its agent's ping is lost, and that status check of EC2's
        fails since then, the machine still running."""
        self._control("POST", "impair", {"instance_id": instance_id, "check": check, "ago_s": ago_s})

    def end_launches(self, instance_type: str, machines: int,
                     code: str = "Server.InsufficientInstanceCapacity") -> None:
        """The next `machines` machines of `instance_type` launched end as they start, as EC2 ends those of a launch
        it accepted but could not place (or start: Client.InternalError), with that state reason (until `reset`)."""
        self._control("POST", "launch-ends", {"instance_type": instance_type, "machines": machines, "code": code})

    def set_quotas(self, values: dict[str, float]) -> None:
        """This account's EC2 vCPU quotas by code (L-417A185B: Running On-Demand P instances, ...) until the next
        reset, which gives each 2048."""
        self._control("POST", "quotas", {"values": values})

    def played(self) -> list[dict[str, Any]]:
        """Commands run: command_id, instance_id, exit_code (None while running), cut_short (still running when its
        machine went away, or the simulator was reset), cold_data (it started while its machine's dataset volume was
        still fetching blocks from its snapshot), stdout and stderr paths."""
        return self._control("GET", "played")

    def set_pending(self, seconds: float) -> None:
        """Machines launched from now on stay pending this long (until the next reset)."""
        self._control("POST", "pending", {"pending_s": seconds})

    def set_boot(self, seconds: float) -> None:
        """Machines seen from now on take this long from running to the end of their first boot (`cloud-init status
        --wait`), a job sent meanwhile waiting for it; their torchrun's default rendezvous wait is half that,
        time here being compressed (until the next reset, which makes boots instant)."""
        self._control("POST", "boot", {"boot_s": seconds})

    def set_reboot(self, seconds: float) -> None:
        """How long a machine rebooted from now on is down, its agent with it (`AWSSIM_REBOOT_S`)."""
        self._control("POST", "reboot", {"reboot_s": seconds})

    def set_shutting_down(self, seconds: float) -> None:
        """Machines terminated from now on are shutting-down this long, their volumes still attached (until the next
        reset, which restores AWSSIM_SHUTTING_DOWN_S, half a second by default)."""
        self._control("POST", "shutting-down", {"shutting_down_s": seconds})

    def set_iam_propagation(self, seconds: float) -> None:
        """IAM answers NoSuchEntity to its calls using a role or instance profile made less than this long ago
        (until the next reset, which restores the brief default)."""
        self._control("POST", "iam-propagation", {"propagation_s": seconds})

    def set_initialization_report_delay(self, seconds: float) -> None:
        """DescribeVolumeStatus reports no initialization for a volume made from a snapshot for this long after its
        creation (until the next reset, which restores the brief default)."""
        self._control("POST", "initialization-report", {"delay_s": seconds})

    def set_snapshot_pending(self, seconds: float) -> None:
        """Snapshots made from now on are pending this long before they are completed (until the next reset,
        which makes them completed at once)."""
        self._control("POST", "snapshot-pending", {"pending_s": seconds})

    def make_foreign_bucket(self, bucket: str, account: str = "111111111111", region: str = "us-east-1",
                            policy: dict | None = None, requester_pays: bool = False,
                            objects: dict[str, str] | None = None, objects_encryption: str | None = None) -> None:
        """A bucket of another account (S3's bucket names are global), with that bucket policy if given, Requester
        Pays if asked, and the objects (key -> text) its owner put there, under that server-side encryption
        (aws:kms: the owner's AWS managed key) if given."""
        self._control("POST", "foreign-bucket", {"bucket": bucket, "account": account, "region": region,
                                                 "policy": json.dumps(policy) if policy else None,
                                                 "requester_pays": requester_pays, "objects": objects or {},
                                                 "objects_encryption": objects_encryption})

    def set_bucket_settling(self, seconds: float) -> None:
        """Buckets made from now on answer NoSuchBucket this long (until the next reset, which restores
        AWSSIM_BUCKET_SETTLING_S, 0.3 s by default)."""
        self._control("POST", "bucket-settling", {"settling_s": seconds})

    def opt_in_local_zone(self, region: str = "us-east-1") -> None:
        """The account opts in to the region's Local Zone (us-east-1-bos-1a), which offers some instance types
        (until the next reset)."""
        self._control("POST", "local-zone", {"region": region})

    def block_public_access(self, mode: str, exclusions: dict[str, str] | None = None, region: str = "us-east-1",
                            exclusions_allowed: bool = True) -> None:
        """VPC Block Public Access on in the region (mode block-bidirectional or block-ingress), with exclusions
        (VPC or subnet id -> allow-egress or allow-bidirectional): machines it blocks have no way out (until the
        next reset)."""
        self._control("POST", "block-public-access", {
            "region": region, "mode": mode, "exclusions": exclusions or {}, "exclusions_allowed": exclusions_allowed})

    def make_unreachable(self, *hosts: str) -> None:
        """Machines launched from now on cannot reach these hosts (until the next reset): a boot's download from one
        fails, asked again or not."""
        self._control("POST", "unreachable", {"hosts": list(hosts)})

    def set_s3_round_trip(self, seconds: float) -> None:
        """S3 answers each GetObject this long after it is asked, as AWS does in tens of milliseconds (until the
        next reset, which makes it 0)."""
        self._control("POST", "s3-round-trip", {"round_trip_s": seconds})

    def s3_reads_at_once(self) -> int:
        """The most GetObject calls S3 has answered at once since the last reset."""
        return self._control("GET", "s3-reads")["most_at_once"]

    def guardduty_runtime_monitoring(self, region: str = "us-east-1", lagging: bool = False) -> None:
        """GuardDuty Runtime Monitoring on in the region, its agent managed for EC2: each VPC a machine runs in gets
        GuardDuty's endpoint and security group (until the next reset); `lagging`: only as its machines are
        terminated."""
        self._control("POST", "guardduty-runtime-monitoring", {"region": region, "lagging": lagging})

    def make_bucket(self, bucket: str, region: str = "us-east-1") -> Any:
        """A bucket of the account's as a user has one: made, and answering (made a while ago). Returns its
        region's S3 client."""
        s3 = self.client("s3", region=region)
        s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}))
        s3.get_waiter("bucket_exists").wait(Bucket=bucket, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
        return s3

    def set_volume_creating(self, seconds: float) -> None:
        """Volumes made from now on are `creating` this long before they are available (until the next reset,
        which restores AWSSIM_VOLUME_CREATING_S, 0.3 s by default)."""
        self._control("POST", "volume-creating", {"creating_s": seconds})

    def set_agent_delay(self, seconds: float) -> None:
        """The SSM agent of each machine launched from now on registers this long after it runs (until `reset`,
        which restores AWSSIM_AGENT_DELAY_S, 1 s by default); SendCommand refuses the machine until then."""
        self._control("POST", "agent", {"delay_s": seconds})

    def set_placement_changing(self, seconds: float) -> None:
        """Placement groups made from now on are pending this long, and deleted ones deleting (until `reset`, which
        restores AWSSIM_PLACEMENT_CHANGING_S, 0.3 s by default)."""
        self._control("POST", "placement", {"changing_s": seconds})

    def set_consistency_window(self, seconds: float) -> None:
        """EC2 answers NotFound to a call naming a resource made less than `seconds` ago, and leaves it out of its
        listings (until `reset`; 0, the default, is off)."""
        self._control("POST", "consistency", {"window_s": seconds})

    def set_profile_propagation(self, seconds: float) -> None:
        """EC2 refuses a launch naming an instance profile made or given its role less than `seconds` ago (until
        `reset`, which restores AWSSIM_PROFILE_PROPAGATION_S, 0.3 s by default)."""
        self._control("POST", "profile-propagation", {"propagation_s": seconds})

    def machines(self) -> list[dict[str, Any]]:
        """Instances seen by the player: instance_id, user_data_check ("ok", bash -n's complaint, ...),
        shutdown_after_s (the user-data shutdown timer it honours, or None), agent (its SSM agent: starting,
        hibernating or registered), agent_hibernated (its first ping found no way out), agent_restarted (its boot
        restarted it while it hibernated), boots (1, and one more for each reboot: EC2's RebootInstances),
        shutdown_in_s (until its shutdown, armed at its first boot and, after a reboot, again; or None)."""
        return self._control("GET", "machines")

    def launches(self) -> list[dict[str, Any]]:
        """Each RunInstances into a placement group: group, instances (their ids) and interfaces (the
        NetworkInterface.N parameters it asked for: DeviceIndex, NetworkCardIndex, InterfaceType, ...)."""
        return self._control("GET", "launches")

    def tagged_regions(self) -> list[str]:
        """The regions where anything carries (or carried) a run's tag."""
        return self._control("GET", "tagged-regions")

    def make_snapshot(self, from_dir: Path, description: str = "", tags: dict[str, str] | None = None,
                      region: str | None = None) -> str:
        """An EBS snapshot holding the files of from_dir (hard-linked where possible: don't edit them in place),
        made through EC2 like any other, in `region` (default: the simulator's); its scratch volume is deleted.
        Returns the snapshot id."""
        ec2 = self.client("ec2", region=region)
        size_gib = max(1, -(-sum(f.stat().st_size for f in Path(from_dir).rglob("*") if f.is_file()) // 2**30))
        volume_id = ec2.create_volume(AvailabilityZone=f"{region or self.region}a", Size=size_gib)["VolumeId"]
        tag_specs = [{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}]
        snapshot_id = ec2.create_snapshot(VolumeId=volume_id, Description=description,
                                          TagSpecifications=tag_specs if tags else [])["SnapshotId"]
        self._control("POST", "seed", {"snapshot_id": snapshot_id, "from_dir": str(Path(from_dir).resolve())})
        self.delete_volume_once_made(volume_id, region)
        return snapshot_id

    def delete_volume_once_made(self, volume_id: str, region: str | None = None) -> None:
        """Delete a volume as soon as EC2 lets it (once it is no longer `creating`); nothing where EBS dropped it
        (a key it could not use)."""
        ec2 = self.client("ec2", region=region)
        deadline = time.monotonic() + 30
        while found := ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [volume_id]}])["Volumes"]:
            if found[0]["State"] != "creating":
                ec2.delete_volume(VolumeId=volume_id)
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"volume {volume_id} still creating after 30 s")
            time.sleep(0.05)


def client_environment(home: Path) -> dict[str, str | None]:
    """The environment (None: unset) that gives every boto3 and s3fs client of a process and its children dummy
    keys and empty config files in `home`: a developer's ~/.aws is never read, and a real wandb key never reaches
    the simulated machines. Set it before `start`, and AWS_ENDPOINT_URL to the simulator's endpoint after."""
    home.mkdir(parents=True, exist_ok=True)
    for name in ("config", "credentials"):
        (home / name).touch()
    unset = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "WANDB_API_KEY")
    return {**dict.fromkeys(unset), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}


@contextmanager
def start(root: Path) -> Iterator[AwsSim]:
    """Run `python -m tests.awssim --root ROOT` until the block ends; its log is ROOT/server.log."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "server.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.awssim", "--root", str(root)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True,
        )
    try:
        line = process.stdout.readline() if process.stdout else ""
        if not line.startswith(READY):
            raise RuntimeError(f"awssim did not start (see {root / 'server.log'}): {line!r}")
        sim = AwsSim(line[len(READY):].strip(), root)
        sim.client("ec2").describe_instance_types(InstanceTypes=["p3.16xlarge"])  # moto's slow first EC2 call
        yield sim
    finally:
        process.terminate()  # the server kills the processes it played, then exits
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.stdout:
            process.stdout.close()
