"""The maximums AWS's API models document (a list's items, a string's length, a number's value), which botocore
leaves to the service: it checks only minimums on the client. AWS refuses a call past one; moto takes it. Checked
for the JSON and query protocols (SSM, Service Quotas, IAM, STS) and EFS's REST-JSON; EC2's model states almost
none, and S3's calls here carry none."""

from collections.abc import Iterator

from botocore.model import OperationNotFoundError, Shape

from .calls import AwsCall, service_model

# The error each protocol's services answer a constraint with
# (https://docs.aws.amazon.com/systems-manager/latest/APIReference/CommonErrors.html: ValidationException;
# IAM's query API: ValidationError; EFS: BadRequest, "an invalid parameter value").
CODES = {"json": "ValidationException", "query": "ValidationError", "rest-json": "BadRequest"}


def refusal(call: AwsCall) -> tuple[str, str] | None:
    """(code, message) where the call breaks a maximum of its operation's input, as AWS words it."""
    model = service_model(call.service)
    if model.protocol not in CODES:
        return None
    try:
        shape = model.operation_model(call.action).input_shape
    except OperationNotFoundError:
        return None
    if shape is None:
        return None
    for problem in _problems(shape, "", "", call.params, model.protocol, top=True):
        return CODES[model.protocol], f"1 validation error detected: {problem}"
    return None


def _problems(shape: Shape, key: str, path: str, params: dict[str, str], protocol: str,
              top: bool = False) -> Iterator[str]:
    """What breaks a maximum at flat key `key` (`path`: where AWS's message says it is)."""
    limit = shape.metadata.get("max")
    if shape.type_name == "structure":
        for name, member in shape.members.items():
            wire = member.serialization.get("name", name) if top and protocol == "rest-json" else name
            yield from _problems(member, f"{key}.{wire}" if key else wire,
                                 f"{path}.{_camel(name)}" if path else _camel(name), params, protocol)
    elif shape.type_name == "list":
        items = f"{key}.member" if protocol == "query" and not shape.serialization.get("flattened") else key
        count = len({rest.split(".", 1)[0] for k in params if (rest := k.removeprefix(f"{items}.")) != k})
        if limit is not None and count > limit:
            yield (f"Value at '{path}' failed to satisfy constraint: Member must have length less than or equal "
                   f"to {limit}")
        for index in range(1, count + 1):
            yield from _problems(shape.member, f"{items}.{index}", f"{path}.{index}.member", params, protocol)
    elif limit is not None and (value := params.get(key)) is not None:
        if shape.type_name == "string" and len(value) > limit:
            yield (f"Value '{value}' at '{path}' failed to satisfy constraint: Member must have length less than "
                   f"or equal to {limit}")
        elif shape.type_name in ("integer", "long") and int(value) > limit:
            yield (f"Value '{value}' at '{path}' failed to satisfy constraint: Member must have value less than or "
                   f"equal to {limit}")


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]
