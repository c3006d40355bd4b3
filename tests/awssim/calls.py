"""Which AWS call an HTTP request is: service, action, region, account and flat params, read per protocol."""

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

import botocore.exceptions
import botocore.session
from botocore.model import OperationModel, ServiceModel
from moto.iam.models import get_account_id_from

# SigV4 signing names that differ from botocore's service names.
SERVICE_BY_SIGNING_NAME = {"elasticfilesystem": "efs", "servicequotas": "service-quotas"}


@dataclass
class AwsCall:
    service: str  # botocore's name: ec2, ssm, efs, s3, ...
    action: str  # operation name: RunInstances, SendCommand, CreateFileSystem, PutObject, ...
    region: str
    account: str
    protocol: str  # botocore protocol: ec2, query, json, rest-json, rest-xml
    params: dict[str, str] = field(default_factory=dict)  # flat, EC2 style: "Placement.GroupName", "InstanceIds.1"
    access_key: str = ""  # the signer's

    def list_param(self, name: str) -> list[str]:
        """Values of an EC2-style list parameter: Name.1, Name.2, ..."""
        values = []
        while (value := self.params.get(f"{name}.{len(values) + 1}")) is not None:
            values.append(value)
        return values


@cache
def service_model(service: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service)


def signing_scope(environ: dict[str, Any]) -> tuple[str, str, str] | None:
    """(access key, region, service) from a SigV4 Authorization header, or None for unsigned requests."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    match = re.search(r"Credential=([^/]+)/\d+/([^/]+)/([^/]+)/aws4_request", auth)
    if not match:
        return None
    key, region, signing_name = match.groups()
    return key, region, SERVICE_BY_SIGNING_NAME.get(signing_name, signing_name)


def identify(environ: dict[str, Any], body: bytes) -> AwsCall | None:
    """The call a signed request makes; None when it isn't one we can name (unsigned, unknown service)."""
    scope = signing_scope(environ)
    if scope is None:
        return None
    key, region, service = scope
    try:
        model = service_model(service)
    except botocore.exceptions.UnknownServiceError:
        return None
    call = AwsCall(service, "", region, get_account_id_from(key), model.protocol, access_key=key)
    query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    if model.protocol in ("ec2", "query"):
        call.params = {**query, **dict(parse_qsl(body.decode(), keep_blank_values=True))}
        call.action = call.params.pop("Action", "")
    elif model.protocol == "json":
        call.action = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
        call.params = flatten(json.loads(body or b"{}"))
    else:
        operation, labels = rest_operation(model, environ, query)
        call.action = operation.name if operation else environ["REQUEST_METHOD"]
        call.params = {**query, **labels, **(_header_params(operation, environ) if operation else {})}
        if body and model.protocol == "rest-json":
            call.params.update(flatten(json.loads(body)))
    return call


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """JSON to EC2-style flat params: {"A": {"B": [x]}} -> {"A.B.1": "x"}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value, 1))
    else:
        return {prefix: value if isinstance(value, str) else json.dumps(value)}
    flat: dict[str, str] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return flat


@dataclass(frozen=True)
class _Route:
    operation: OperationModel
    path: re.Pattern[str]
    literal_query: dict[str, str | None]  # "?uploads" -> {"uploads": None}; "?list-type=2" -> {"list-type": "2"}
    required: tuple[tuple[str, str], ...]  # (location, wire name) of required header / query members


@cache
def _routes(model: ServiceModel) -> tuple[_Route, ...]:
    routes = []
    for name in model.operation_names:
        operation = model.operation_model(name)
        path, _, query = operation.http["requestUri"].partition("?")
        pattern = re.sub(
            r"\\{(\w+)(\\\+)?\\}",
            lambda m: f"(?P<{m[1]}>.+)" if m[2] else f"(?P<{m[1]}>[^/]+)",
            re.escape(path),
        )
        literal: dict[str, str | None] = {}
        for part in filter(None, query.split("&")):
            key, eq, value = part.partition("=")
            literal[key] = value if eq else None
        members = operation.input_shape.members if operation.input_shape else {}
        required_names = operation.input_shape.required_members if operation.input_shape else []
        required = tuple(
            (members[m].serialization["location"], members[m].serialization.get("name", m))
            for m in required_names
            if members[m].serialization.get("location") in ("header", "querystring")
        )
        routes.append(_Route(operation, re.compile(pattern + "/?$"), literal, required))
    return tuple(routes)


def rest_operation(
    model: ServiceModel, environ: dict[str, Any], query: dict[str, str]
) -> tuple[OperationModel | None, dict[str, str]]:
    """The operation a REST request calls (method, path template, query flags, required headers) and its labels."""
    method = environ["REQUEST_METHOD"]
    # WSGI hands over the percent-decoded path as latin-1; S3 keys are UTF-8.
    path = environ.get("PATH_INFO", "/").encode("latin-1").decode("utf-8", "replace")
    best: tuple[int, OperationModel | None, dict[str, str]] = (-1, None, {})
    for route in _routes(model):
        if route.operation.http["method"] != method or not (match := route.path.match(path)):
            continue
        if any(key not in query or (value is not None and query[key] != value)
               for key, value in route.literal_query.items()):
            continue
        if not all(_present(environ, query, location, name) for location, name in route.required):
            continue
        score = len(route.literal_query) + len(route.required)
        if score > best[0]:
            best = (score, route.operation, match.groupdict())
    return best[1], best[2]


def _header_params(operation: OperationModel, environ: dict[str, Any]) -> dict[str, str]:
    """The operation's members sent as headers, by member name: x-amz-server-side-encryption is
    ServerSideEncryption."""
    members = operation.input_shape.members if operation.input_shape else {}
    headers = {name: _environ_name(member.serialization.get("name", name)) for name, member in members.items()
               if member.serialization.get("location") == "header"}
    return {name: environ[header] for name, header in headers.items() if header in environ}


def _environ_name(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


def _present(environ: dict[str, Any], query: dict[str, str], location: str, name: str) -> bool:
    if location == "header":
        return _environ_name(name) in environ
    return name in query
