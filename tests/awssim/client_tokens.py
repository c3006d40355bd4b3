"""EC2's client tokens, which moto ignores: RunInstances asked again with the token of one it carried out answers
as that one did and launches nothing more; with other parameters, IdempotentParameterMismatch
(https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html)."""

import threading

from .calls import AwsCall
from .errors import Response, error_response


class ClientTokens:
    def __init__(self) -> None:
        self._answers: dict[tuple[str, str, str], tuple[dict, Response]] = {}
        self._lock = threading.Lock()

    def answer(self, call: AwsCall) -> Response | None:
        """The answer of the launch carried out with this call's token, if one was."""
        token = call.params.get("ClientToken")
        with self._lock:
            params, answer = self._answers.get((call.account, call.region, token or ""), (None, None))
        if answer is None:
            return None
        if params != call.params:
            return error_response("ec2", "IdempotentParameterMismatch", "Arguments on this idempotent request are "
                                  "inconsistent with arguments used in previous request(s).")
        return answer

    def record(self, call: AwsCall, body: bytes) -> None:
        if token := call.params.get("ClientToken"):
            with self._lock:
                self._answers[(call.account, call.region, token)] = (
                    dict(call.params), Response(200, [("Content-Type", "text/xml;charset=UTF-8")], body))

    def clear(self) -> None:
        with self._lock:
            self._answers.clear()
