"""What SSM knows of each machine's agent, which moto does not model: DescribeInstanceInformation (moto lacks it),
and SendCommand refused for a machine whose agent is not online (unless its machine is rebooting), or for an
executionTimeout that AWS-RunShellScript does not allow."""

import json
import re
import time

from .calls import AwsCall
from .errors import Response, error_response
from .player import Player

ACTIONS = ("SendCommand", "DescribeInstanceInformation")
# AWS-RunShellScript's own allowedPattern for executionTimeout: 1 to 172800 s (48 h).
EXECUTION_TIMEOUT = re.compile(r"([1-9][0-9]{0,4})|(1[0-6][0-9]{4})|(17[0-1][0-9]{3})|(172[0-7][0-9]{2})|(172800)")


def handle(call: AwsCall, player: Player) -> Response | None:
    """The answer instead of moto's, or None to let moto answer."""
    if call.action == "DescribeInstanceInformation":
        return _describe(call, player)
    return _refusal(call, player)


def _refusal(call: AwsCall, player: Player) -> Response | None:
    timeout = call.params.get("Parameters.executionTimeout.1")
    if call.params.get("DocumentName") == "AWS-RunShellScript" and timeout is not None \
            and not EXECUTION_TIMEOUT.fullmatch(timeout):
        return error_response("ssm", "InvalidParameters", f"Parameter executionTimeout value {timeout} does not match "
                                                          "the allowed pattern of AWS-RunShellScript")
    # A rebooting machine's agent stays registered: its commands wait for it (the player holds them).
    online, rebooting = player.agents(), player.rebooting()
    bad = [i for i in call.list_param("InstanceIds") if online.get(i) != "Online" and i not in rebooting]
    if not bad:
        return None
    return error_response("ssm", "InvalidInstanceId", f"Instances [{', '.join(bad)}] not in a valid state for account "
                                                      f"{call.account}")


def _describe(call: AwsCall, player: Player) -> Response:
    wanted = _filter_values(call, "Filters", "Key", "Values", "InstanceIds") or _filter_values(
        call, "InstanceInformationFilterList", "key", "valueSet", "InstanceIds")
    now = time.time()
    found = [{"InstanceId": instance_id, "PingStatus": ping, "LastPingDateTime": now, "PlatformType": "Linux",
              "PlatformName": "Ubuntu", "ResourceType": "EC2Instance", "AgentVersion": "3.3.0.0"}
             for instance_id, ping in sorted(player.agents().items()) if wanted is None or instance_id in wanted]
    return Response(200, [("Content-Type", "application/x-amz-json-1.1")],
                    json.dumps({"InstanceInformationList": found}).encode())


def _filter_values(call: AwsCall, name: str, key: str, values: str, wanted_key: str) -> set[str] | None:
    """The values of the filter `wanted_key` in a JSON list of filters, flattened: Filters.1.Key, Filters.1.Values.1."""
    number = 1
    while (given := call.params.get(f"{name}.{number}.{key}")) is not None:
        if given == wanted_key:
            return set(call.list_param(f"{name}.{number}.{values}"))
        number += 1
    return None
