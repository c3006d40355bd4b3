"""EC2's status checks of the run's machines. A machine whose hardware fails (the system status check: AWS's host,
network or power under it) or whose OS stops answering (the instance status check: a kernel panic, its memory
exhausted) is still described running, and its SSM command stays in progress: only its status checks say it is
gone. On the GPU types with instance store and EFA (p4d, p5) EC2 does not recover it by itself."""

from __future__ import annotations

from tasks.backends.aws.clients import Clients

# What each check's failure means, as the status says it
FAILED_CHECKS = {
    "SystemStatus": "failed EC2's system status check (the hardware, network or power under it)",
    "InstanceStatus": "failed EC2's instance status check (its OS does not answer)",
}
IDS_PER_CALL = 100  # DescribeInstanceStatus takes at most 100 instance ids


def impaired(clients: Clients, instance_ids: list[str]) -> dict[str, str]:
    """The machines among these running ones whose status checks EC2 reports impaired, with what failed."""
    found = {}
    for start in range(0, len(instance_ids), IDS_PER_CALL):
        answer = clients.ec2.describe_instance_status(InstanceIds=instance_ids[start:start + IDS_PER_CALL])
        for status in answer["InstanceStatuses"]:
            failed = [words for check, words in FAILED_CHECKS.items()
                      if status.get(check, {}).get("Status") == "impaired"]
            if failed:
                found[status["InstanceId"]] = " and ".join(failed)
    return found
