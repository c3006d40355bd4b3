"""ListCommands as AWS answers it, where moto ignores Filters and MaxResults: the commands that pass every filter,
newest first, in pages of at most 50 with a NextToken. Keys moto does not know are refused as AWS refuses them."""

import json
from datetime import UTC, datetime

from .calls import AwsCall
from .errors import Response, error_response

PAGE_SIZE = 50  # ListCommands' MaxResults: 1 to 50
FILTER_KEYS = ("InvokedAfter", "InvokedBefore", "Status", "ExecutionStage", "DocumentName")
EXECUTION_STAGES = {"Executing": ("Pending", "InProgress", "Delayed", "Cancelling"),
                    "Complete": ("Success", "Cancelled", "Failed", "TimedOut", "Terminated", "Undeliverable")}


def refusal(call: AwsCall) -> Response | None:
    for key, value in _filters(call):
        if key not in FILTER_KEYS:
            return error_response("ssm", "InvalidFilterKey", f"The specified key {key} is not valid.")
        if key.startswith("Invoked") and _timestamp(value) is None:
            return error_response("ssm", "InvalidFilterValue", f"The filter value {value} is not a timestamp.")
        if key == "ExecutionStage" and value not in EXECUTION_STAGES:
            return error_response("ssm", "InvalidFilterValue", f"The filter value {value} is not valid.")
    return None


def answer(call: AwsCall, body: bytes) -> bytes:
    """moto's list of every command (or those of InstanceId / CommandId), filtered and paged."""
    commands = [c for c in json.loads(body)["Commands"] if all(_passes(c, k, v) for k, v in _filters(call))]
    commands.sort(key=lambda c: _timestamp(c["RequestedDateTime"]), reverse=True)
    start = int(call.params.get("NextToken", "0"))
    end = start + min(PAGE_SIZE, int(call.params.get("MaxResults", PAGE_SIZE)))
    page: dict = {"Commands": commands[start:end]}
    if end < len(commands):
        page["NextToken"] = str(end)
    return json.dumps(page).encode()


def _filters(call: AwsCall) -> list[tuple[str, str]]:
    found, number = [], 1
    while (key := call.params.get(f"Filters.{number}.key")) is not None:
        found.append((key, call.params.get(f"Filters.{number}.value", "")))
        number += 1
    return found


def _passes(command: dict, key: str, value: str) -> bool:
    requested = _timestamp(command["RequestedDateTime"])
    if key == "InvokedAfter":
        return requested >= _timestamp(value)
    if key == "InvokedBefore":
        return requested <= _timestamp(value)
    if key == "DocumentName":
        return command.get("DocumentName") == value
    if key == "Status":
        return command.get("Status") == value
    return command.get("Status") in EXECUTION_STAGES[value]


def _timestamp(value: str | float | int) -> datetime | None:
    """A JSON timestamp (epoch seconds, as moto answers) or an ISO 8601 one (as a filter gives it)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            return datetime.fromtimestamp(float(value), UTC)
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
