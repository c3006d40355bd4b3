"""EBS's performance rules for a new volume, which moto does not check (Amazon EBS volume types,
https://docs.aws.amazon.com/ebs/latest/userguide/general-purpose.html and provisioned-iops.html): gp3 has 3,000 IOPS
and 125 MiB/s whatever its size, and more at up to 500 IOPS per GiB and 0.25 MiB/s per IOPS; io1 up to 50 and io2
up to 1,000 IOPS per GiB. EC2 refuses the rest with InvalidParameterValue, in the words users' reports quote:
"Iops to volume size ratio of 750.000000 is too high; maximum is 500", "Throughput (MiBps) to iops ratio of
0.333333 is too high; maximum is 0.250000 MiBps per iops"."""

from typing import Any

from .calls import AwsCall

IOPS_PER_GIB = {"gp3": 500, "io1": 50, "io2": 1000}
GP3_IOPS, GP3_MIBPS = 3000, 125  # included, whatever the size
GP3_MIBPS_PER_IOPS = 0.25


def create_volume_error(call: AwsCall, ec2_backend: Any) -> tuple[str, str] | None:
    """(code, message) EC2 answers a CreateVolume whose IOPS its size, or whose throughput its IOPS, cannot have."""
    kind = call.params.get("VolumeType", "gp2")
    if kind not in IOPS_PER_GIB:
        return None
    snapshot = ec2_backend.snapshots.get(call.params.get("SnapshotId", ""))
    size = int(call.params.get("Size") or (snapshot.volume.size if snapshot else 1))
    iops = int(call.params.get("Iops", GP3_IOPS if kind == "gp3" else 0))
    if iops > (GP3_IOPS if kind == "gp3" else 0) and iops / size > IOPS_PER_GIB[kind]:
        return ("InvalidParameterValue",
                f"Iops to volume size ratio of {iops / size:.6f} is too high; maximum is {IOPS_PER_GIB[kind]}")
    throughput = int(call.params.get("Throughput", GP3_MIBPS))
    if kind == "gp3" and throughput / iops > GP3_MIBPS_PER_IOPS:
        return ("InvalidParameterValue", f"Throughput (MiBps) to iops ratio of {throughput / iops:.6f} is too high; "
                f"maximum is {GP3_MIBPS_PER_IOPS:.6f} MiBps per iops")
    return None
