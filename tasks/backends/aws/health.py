"""EC2's status checks of the run's machines. A machine whose hardware fails (the system status check: AWS's host,
network or power under it) or whose OS stops answering (the instance status check: a kernel panic, its memory
exhausted) is still described running, and its SSM command stays in progress: only its status checks say it is
gone. On the GPU types with instance store and EFA (p4d, p5) EC2 does not recover it by itself."""

from __future__ import annotations

import datetime as dt
import logging

from botocore.exceptions import BotoCoreError, ClientError

from tasks.backends.aws.clients import Clients, error_code

log = logging.getLogger(__name__)

# What each check's failure means, as the status says it
FAILED_CHECKS = {
    "SystemStatus": "failed EC2's system status check (the hardware, network or power under it)",
    "InstanceStatus": "failed EC2's instance status check (its OS does not answer)",
}
IDS_PER_CALL = 100  # DescribeInstanceStatus takes at most 100 instance ids
# A check fails for a while as a machine reboots (EC2's maintenance, which leaves it as it was), and EC2 may clear
# a failure it found: only one that has lasted this long makes a machine gone, which is then replaced.
IMPAIRED_FOR = dt.timedelta(minutes=5)


def impaired(clients: Clients, instance_ids: list[str]) -> dict[str, str]:
    """The machines among these running ones whose status checks have failed for IMPAIRED_FOR, with what failed.
    Nothing where EC2 does not answer (a throttled call, an id it does not know yet): the next look asks again."""
    found: dict[str, str] = {}
    now = dt.datetime.now(dt.timezone.utc)
    try:
        for start in range(0, len(instance_ids), IDS_PER_CALL):
            answer = clients.ec2.describe_instance_status(InstanceIds=instance_ids[start:start + IDS_PER_CALL])
            for status in answer["InstanceStatuses"]:
                failed = [words for check, words in FAILED_CHECKS.items()
                          if _failed_since(status.get(check, {}), now) <= now - IMPAIRED_FOR]
                if failed:
                    found[status["InstanceId"]] = " and ".join(failed)
    except (BotoCoreError, ClientError) as exc:
        log.warning("EC2 answered %s to a look at the machines' status checks; the next look asks again",
                    error_code(exc) or exc)
        return {}
    return found


def _failed_since(check: dict, now: dt.datetime) -> dt.datetime:
    """When the check began to fail (EC2's ImpairedSince: a moment ago where it does not say); never where it
    passes."""
    if check.get("Status") != "impaired":
        return dt.datetime.max.replace(tzinfo=dt.timezone.utc)
    return min((detail["ImpairedSince"] for detail in check.get("Details", []) if "ImpairedSince" in detail),
               default=now)
