"""Our tags: every resource a run creates carries its run id and expiry, and is found by them for deletion."""

from __future__ import annotations

import datetime as dt

RUN = "imagenet18:run"
EXPIRES = "imagenet18:expires"
INDEX = "imagenet18:index"  # machine i and replica i
# On dataset snapshots made by `imagenet18 snapshot`: where the dataset came from, its folder on the volume, and
# the resized copies (-sz/<px>) beside it, so a run whose schedule reads another size is refused before it starts.
DATASET_SOURCE = "imagenet18:dataset-source"
DATASET_FOLDER = "imagenet18:dataset-folder"
DATASET_SIZES = "imagenet18:dataset-sizes"


def stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def tag_list(run_id: str, expires_at: dt.datetime, name: str | None = None, **extra: str) -> list[dict]:
    tags = {RUN: run_id, EXPIRES: stamp(expires_at), **extra}
    if name:
        tags["Name"] = name
    return [{"Key": key, "Value": str(value)} for key, value in tags.items()]


def tag_specs(resource_type: str, tags: list[dict]) -> list[dict]:
    return [{"ResourceType": resource_type, "Tags": tags}]


def run_filter(run_id: str | None) -> list[dict]:
    """EC2 filters for one run's resources, or every run's when run_id is None."""
    if run_id is None:
        return [{"Name": "tag-key", "Values": [RUN]}]
    return [{"Name": f"tag:{RUN}", "Values": [run_id]}]


def as_dict(tags: list[dict] | None) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in tags or []}


def expires(tags: dict[str, str]) -> dt.datetime:
    raw = tags.get(EXPIRES)
    return dt.datetime.fromisoformat(raw) if raw else dt.datetime.max.replace(tzinfo=dt.timezone.utc)
