"""The WSGI wrapper around moto's server app: control endpoints, fault injection, what moto lacks (IAM policies and
their simulator, the API models' maximums, the regions an account has not enabled, placement groups, instance-type
and default-VPC checks, the machines' SSM agents, EC2's vCPU and Elastic IP quotas, EBS's IOPS and storage quotas
and its volumes' performance rules, EC2's eventual consistency, its refusals of an address on a pending machine, of
an associated address's release, of a subnet's, a security group's or a VPC's deletion while something depends on it
and of a volume's attachment that EC2 would not make, EBS volume initialization and encryption keys, S3's use of KMS
keys, its new buckets' settling and its GETs' round trip, ListCommands' filters and pages, the Price List API, SSM's
throttling of Run Command's reads, GuardDuty's endpoints in VPCs with machines), and hooks that keep disk contents
and the player in step with each call."""

import contextlib
import io
import json
import os
import threading
import time
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from . import (access, agent, attach, backends, bucket_owners, bucket_settling, catalogue, command_invocations,
               command_list, encryption, guardduty, limits, network, prices, regions, s3_keys, tagging,
               volume_performance, volume_states)
from .calls import AwsCall, identify, signing_scope
from .consistency import Consistency
from .control import Control
from .errors import Response, error_response
from .faults import FaultRule, Faults
from .placement import ACTIONS as PLACEMENT_ACTIONS
from .placement import PlacementGroups
from .player import Player
from .quotas import Quotas
from .throttle import SsmThrottle

READ_ONLY_PREFIXES = ("Describe", "Get", "List")
# A round trip to a real AWS endpoint, added to every AWS call (0 by default): benchmarks of parallel calls
# against moto, whose answers are otherwise instant, set it.
LATENCY_SECONDS = float(os.environ.get("AWSSIM_LATENCY_S", "0"))
COUNTED_BY_QUOTAS = {("ec2", "CreateVolume"), ("ec2", "RunInstances"), ("ec2", "AllocateAddress"), ("ec2", "CreateVpc"),
                     ("ec2", "CreateInternetGateway")}
WATCHED_SERVICES = ("ec2", "efs", "ssm")  # whose writes can change disks, instances or commands
EC2_REFUSALS = {"AssociateAddress": network.associate_address_error, "ReleaseAddress": network.release_address_error,
                "DeleteSubnet": network.delete_subnet_error, "DeleteSecurityGroup": network.delete_security_group_error,
                "DeleteVpc": network.delete_vpc_error, "AttachVolume": attach.attach_volume_error,
                "DetachVolume": attach.detach_volume_error, "CreateTags": tagging.tagging_error,
                "DeleteTags": tagging.tagging_error, "DeleteVolume": volume_states.delete_volume_error}


class AwsSimApp:
    def __init__(self, moto: WSGIApplication, faults: Faults, placement: PlacementGroups, player: Player,
                 quotas: Quotas, throttle: SsmThrottle, consistency: Consistency, control: Control) -> None:
        self.moto, self.faults, self.placement, self.player, self.control = moto, faults, placement, player, control
        self.quotas, self.throttle, self.consistency = quotas, throttle, consistency
        self.creating = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if environ.get("PATH_INFO", "").startswith("/_awssim/"):
            return self.control(environ, start_response)
        scope = signing_scope(environ)
        if scope is None:
            return self.moto(environ, start_response)
        streamed = scope[2] == "s3"  # S3 bodies can be large, and nothing here needs them
        call = identify(environ, b"" if streamed else _buffer(environ))
        if call is None:
            return self.moto(environ, start_response)
        time.sleep(LATENCY_SECONDS)
        if call.service == "ec2":
            self.player.encryption.vanish()
        rule = self.faults.pick(call)
        if rule is not None and not rule.carried_out:
            self.faults.hold(rule)
            return error_response(call.service, rule.code, rule.message, rule.status).send(start_response)
        early = (error_response("ssm", "ThrottlingException", "Rate exceeded") if self.throttle.refuses(call)
                 else self.consistency.refusal(call))
        if early is not None:
            return self._own_answer(call, early, rule).send(start_response)
        # A quota counts what exists: its check and the creation it allows go together, as on AWS.
        with self.creating if (call.service, call.action) in COUNTED_BY_QUOTAS else contextlib.nullcontext():
            answer = self._instead_of_moto(call)
            if answer is not None:
                return self._own_answer(call, answer, rule).send(start_response)
            if streamed:
                if rule is not None:  # not watched: the rule's answer is not given
                    self.faults.unfire(rule)
                if call.action == "GetObject":
                    with self.player.s3_reads.answering():
                        return self.moto(environ, start_response)
                return self.moto(environ, start_response)
            if call.service == "ec2" and call.action == "TerminateInstances":
                self.player.guardduty.record_termination(call.region, backends.ec2(call.account, call.region), [
                    value for key, value in call.params.items() if key.startswith("InstanceId.")])
            state_filters = self.consistency.defer_state_filters(call, environ)
            status, headers, body = _forward(self.moto, environ)
        if status.startswith("2"):
            body = self._after(call, body, state_filters)
            if rule is not None:  # done, and the answer lost
                return error_response(call.service, rule.code, rule.message, rule.status).send(start_response)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        elif rule is not None:
            self.faults.unfire(rule)
        start_response(status, headers)
        return [body]

    def _own_answer(self, call: AwsCall, answer: Response, carried_out: FaultRule | None) -> Response:
        """The simulator's answer to a call, or where a carried_out rule fired on a call it did (a 2xx), the rule's
        error; on a call it refused, the rule is not spent."""
        if carried_out is None:
            return answer
        if answer.status < 300:
            return error_response(call.service, carried_out.code, carried_out.message, carried_out.status)
        self.faults.unfire(carried_out)
        return answer

    def _instead_of_moto(self, call: AwsCall) -> Response | None:
        if (disabled := regions.refusal(call)) is not None:
            code, message, status = disabled
            return error_response(call.service, code, message, status)
        refusal = access.user_refusal(call) or access.role_refusal(call)
        if refusal is not None:
            return refusal
        if (beyond := limits.refusal(call)) is not None:
            return error_response(call.service, *beyond)
        if call.service == "ec2" and (too_long := tagging.tag_length_error(call)) is not None:
            return error_response("ec2", *too_long)
        if call.service == "iam" and call.action == "SimulatePrincipalPolicy":
            return access.simulate_principal_policy(call)
        if call.service == "ec2" and call.action in PLACEMENT_ACTIONS:
            return self.placement.handle(call)
        if call.service == "ec2" and call.action == "RunInstances":
            if (again := self.player.launch_tokens.answer(call)) is not None:
                return again
            ec2 = backends.ec2(call.account, call.region)
            refusal = (catalogue.run_instances_error(call, ec2) or network.run_instances_error(call, ec2)
                       or self.quotas.launch_error(call, ec2))
            if refusal is not None:
                return error_response("ec2", *refusal)
            return access.spot_role_refusal(call) or self.placement.launch_error(call)
        if call.service == "ec2" and call.action == "AllocateAddress":
            refusal = self.quotas.allocate_error(backends.ec2(call.account, call.region))
            return None if refusal is None else error_response("ec2", *refusal)
        if call.service == "ec2" and call.action in ("CreateVpc", "CreateInternetGateway"):
            refusal = self.quotas.network_error(call, backends.ec2(call.account, call.region))
            return None if refusal is None else error_response("ec2", *refusal)
        if call.service == "ec2" and call.action in EC2_REFUSALS:
            refusal = EC2_REFUSALS[call.action](call, backends.ec2(call.account, call.region))
            return None if refusal is None else error_response("ec2", *refusal)
        if call.service == "ec2" and call.action == "CreateVolume":
            ec2 = backends.ec2(call.account, call.region)
            refusal = volume_performance.create_volume_error(call, ec2) or self.quotas.create_volume_error(call, ec2)
            return error_response("ec2", *refusal) if refusal else self.player.initializations.create_error(call)
        if call.service == "ec2" and call.action == "DescribeVolumeStatus":
            return self.player.initializations.describe_status(call)
        if call.service == "ec2" and call.action == "DescribeVpcBlockPublicAccessOptions":
            return self.player.public_access.options_answer(call)
        if call.service == "ec2" and call.action == "DescribeVpcBlockPublicAccessExclusions":
            return self.player.public_access.exclusions_answer(call)
        if call.service == "ec2" and call.action == "DeleteVpcEndpoints":
            return guardduty.delete_vpc_endpoints_answer(call, backends.ec2(call.account, call.region))
        if call.service == "ec2" and call.action == "GetEbsDefaultKmsKeyId":
            return encryption.default_key_answer(call)
        if call.service == "efs" and call.action == "CreateMountTarget":
            return access.file_system_role_refusal(call)
        if call.service == "ssm" and call.action == "ListCommands":
            return command_list.refusal(call)
        if call.service == "ssm" and call.action == "ListCommandInvocations":
            return command_invocations.answer(call, self.player)
        if call.service == "ssm" and call.action in agent.ACTIONS:
            return agent.handle(call, self.player)
        if call.service == "s3":
            return (bucket_owners.refusal(call) or bucket_settling.refusal(call) or access.s3_refusal(call)
                    or s3_keys.foreign_managed_key_refusal(call) or s3_keys.state_refusal(call))
        if call.service == "service-quotas":
            return self.quotas.handle(call)
        if call.service == "pricing":
            return prices.answer(call)
        return None

    def _after(self, call: AwsCall, body: bytes, state_filters: dict[str, set[str]]) -> bytes:
        """Hooks on moto's successful answer (`state_filters`: those moto was not given); returns the answer to
        send."""
        self.consistency.record(call, body)
        body = self.consistency.listed(call, body, state_filters)
        body = self.consistency.read_before_roles_added(call, body)
        if call.service == "ec2" and call.action == "RunInstances":
            self.placement.record_launch(call, body)
            self.player.launch_tokens.record(call, body)
            self.player.guardduty.record_launch(call.region, backends.ec2(call.account, call.region))
        if call.service == "ec2" and call.action == "CreateVolume":
            self.player.initializations.record_create(call, body)
            self.player.encryption.record_create(call, body)
            body = body.replace(b"<status>available</status>", b"<status>creating</status>", 1)  # as EC2 answers
        if call.service in WATCHED_SERVICES and not call.action.startswith(READ_ONLY_PREFIXES):
            self.player.tick()  # new disks get their contents, new commands start, dead machines' processes die
        if call.service == "ssm" and call.action == "SendCommand":
            # moto answers "Success" before anything ran; AWS answers "Pending".
            answer = json.loads(body)
            answer["Command"].update(Status="Pending", StatusDetails="Pending")
            body = json.dumps(answer).encode()
        if call.service == "ssm" and call.action == "ListCommands":
            body = command_list.answer(call, body)
        return body


def _buffer(environ: WSGIEnvironment) -> bytes:
    """Read the request body and put it back, so moto reads it too."""
    length = environ.get("CONTENT_LENGTH")
    stream = environ["wsgi.input"]
    body = stream.read(int(length)) if length else (stream.read() if environ.get("wsgi.input_terminated") else b"")
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _forward(app: WSGIApplication, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call moto and collect its whole answer."""
    answer: dict[str, Any] = {}
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer.update(status=status, headers=headers)
        return chunks.append

    result = app(environ, start_response)
    try:
        chunks.extend(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return answer["status"], answer["headers"], b"".join(chunks)
