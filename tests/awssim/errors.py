"""AWS error responses in each protocol's own format, so botocore raises ClientError with the right code."""

import json
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from wsgiref.types import StartResponse
from xml.sax.saxutils import escape

from .calls import service_model

# HTTP status AWS answers with, where it isn't 400.
STATUS_BY_CODE = {
    "RequestLimitExceeded": 503,
    "InsufficientInstanceCapacity": 500,
    "InternalError": 500,
    "ServiceUnavailable": 503,
    "SlowDown": 503,
    "InternalServerError": 500,
}
# EFS answers throttling with 429; JSON services such as SSM with 400.
STATUS_BY_SERVICE_CODE = {("efs", "ThrottlingException"): 429}


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def send(self, start_response: StartResponse) -> list[bytes]:
        headers = [*self.headers, ("Content-Length", str(len(self.body)))]
        start_response(f"{self.status} {HTTPStatus(self.status).phrase}", headers)
        return [self.body]


def default_status(service: str, code: str) -> int:
    return STATUS_BY_SERVICE_CODE.get((service, code), STATUS_BY_CODE.get(code, 400))


def xml_response(body: str, status: int = 200) -> Response:
    return Response(status, [("Content-Type", "text/xml")], f'<?xml version="1.0" encoding="UTF-8"?>\n{body}'.encode())


def json_response(body: dict) -> Response:
    """A JSON service's answer (Service Quotas', the Price List's)."""
    return Response(200, [("Content-Type", "application/x-amz-json-1.1")], json.dumps(body).encode())


def error_response(service: str, code: str, message: str, status: int | None = None) -> Response:
    status = status or default_status(service, code)
    request_id = str(uuid.uuid4())
    model = service_model(service)
    code_x, message_x = escape(code), escape(message)
    if model.protocol == "ec2":
        return xml_response(
            f"<Response><Errors><Error><Code>{code_x}</Code><Message>{message_x}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>",
            status,
        )
    if model.protocol == "query":
        return xml_response(
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code_x}</Code><Message>{message_x}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>",
            status,
        )
    if model.protocol == "rest-xml":
        return xml_response(
            f"<Error><Code>{code_x}</Code><Message>{message_x}</Message><RequestId>{request_id}</RequestId></Error>",
            status,
        )
    if model.protocol == "json":
        content_type = f"application/x-amz-json-{model.metadata.get('jsonVersion', '1.1')}"
        body = {"__type": code, "message": message}
        return Response(status, [("Content-Type", content_type), ("x-amzn-RequestId", request_id)],
                        json.dumps(body).encode())
    # rest-json (EFS): the code travels in a header, the body repeats it the way EFS does.
    body = {"ErrorCode": code, "Message": message}
    return Response(
        status,
        [("Content-Type", "application/json"), ("x-amzn-ErrorType", code), ("x-amzn-RequestId", request_id)],
        json.dumps(body).encode(),
    )
