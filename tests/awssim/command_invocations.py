"""ListCommandInvocations, which moto lacks: the invocations of a command (or of an instance's commands), with
Details each plugin's account as its agent sent it (CommandPlugins: its Output, at most 2,500 characters). The
agent's own words go there: its report of a command whose worker it lost after a reboot sets the plugin's Output
alone, not the standard output or error that GetCommandInvocation gives (amazon-ssm-agent's
generateUnexpectedFailResult and prepareRuntimeStatus)."""

import json
from typing import Any

from . import backends
from .calls import AwsCall
from .errors import Response
from .player import Player

OUTPUT_LIMIT = 2500  # API_CommandPlugin's Output
PLUGIN = "aws:runShellScript"  # AWS-RunShellScript's one step
INVOCATION_KEYS = ("CommandId", "InstanceId", "Comment", "DocumentName", "Status", "StatusDetails",
                   "StandardOutputUrl", "StandardErrorUrl")


def answer(call: AwsCall, player: Player) -> Response:
    command_id, instance_id = call.params.get("CommandId"), call.params.get("InstanceId")
    details = call.params.get("Details") == "true"
    found = []
    for command in _commands(call.account, call.region):
        if command_id not in (None, command.command_id):
            continue
        for invocation in command.invocations:
            if instance_id not in (None, invocation["InstanceId"]):
                continue
            listed: dict[str, Any] = {key: invocation.get(key, "") for key in INVOCATION_KEYS}
            listed["RequestedDateTime"] = command.requested_date_time.timestamp()
            if details:
                listed["CommandPlugins"] = [{
                    "Name": PLUGIN, "Status": invocation["Status"], "StatusDetails": invocation["StatusDetails"],
                    "ResponseCode": invocation["ResponseCode"],
                    "Output": player.plugin_output(command.command_id, invocation["InstanceId"])[:OUTPUT_LIMIT]}]
            found.append(listed)
    return Response(200, [("Content-Type", "application/x-amz-json-1.1")],
                    json.dumps({"CommandInvocations": found}).encode())


def _commands(account: str, region: str) -> list[Any]:
    return next((list(ssm._commands) for found_account, found_region, ssm in backends.ssm_all()
                 if (found_account, found_region) == (account, region)), [])
