"""Errors users can act on.

Every error says what was wrong, where, and how to fix it. Each class carries the HTTP status
the API answers with; the handlers in ``manager.api.problems`` turns them into
``application/problem+json``. Third-party errors are translated where they occur
(``raise ... from exc``).

    LastmileError (500)
    ├── InvalidInput (422)          bad name, bad argument, bad file
    │   ├── InvalidModelFile (422)  corrupt / unreadable ONNX
    │   ├── PipelineError (422)     steps that do not fit together
    │   ├── BadRequest (400)        a body that is not what the route takes
    │   ├── PayloadTooLarge (413)   upload or archive over a limit
    │   └── UnsupportedMedia (415)  content type a route does not take
    ├── Unauthenticated (401)       no key, unknown, revoked or expired key
    ├── Forbidden (403)             role too low, setting off, foreign origin or host
    ├── NotFound (404)              also: a resource in a workspace you are not a member of
    ├── Conflict (409)              already exists, in use, a concurrent change
    │   └── PreconditionFailed (412) If-Match does not match the current version
    ├── ApiUnreachable (503)        the SDK could not reach the management API
    ├── TritonError (502)           Triton refused or failed
    │   └── TritonUnavailable (503) not running / not ready in time
    ├── GatewayError (502)          the gateway refused or is unreachable
    ├── PrometheusError (502)       LASTMILE_PROMETHEUS_URL refused a query or is unreachable
    ├── StorageFull (507)           a folder of the manager is at its bound; try again later
    └── RuntimeSetupError (500)     missing system library, missing wheel
"""

from __future__ import annotations


class LastmileError(Exception):
    status_code = 500
    title = "Internal error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidInput(LastmileError):
    status_code = 422
    title = "Invalid input"


class InvalidModelFile(InvalidInput):
    title = "Invalid model file"


class PipelineError(InvalidInput):
    title = "Invalid pipeline"


class BadRequest(InvalidInput):
    status_code = 400
    title = "Bad request"


class PayloadTooLarge(InvalidInput):
    status_code = 413
    title = "Payload too large"


class UnsupportedMedia(InvalidInput):
    status_code = 415
    title = "Unsupported media type"


class Unauthenticated(LastmileError):
    status_code = 401
    title = "Unauthenticated"


class Forbidden(LastmileError):
    status_code = 403
    title = "Forbidden"


class NotFound(LastmileError):
    status_code = 404
    title = "Not found"


class Conflict(LastmileError):
    status_code = 409
    title = "Conflict"


class PreconditionFailed(Conflict):
    status_code = 412
    title = "Precondition failed"


class ApiUnreachable(LastmileError):
    status_code = 503
    title = "Lastmile API not reachable"


class TritonError(LastmileError):
    status_code = 502
    title = "Triton error"


class TritonUnavailable(TritonError):
    status_code = 503
    title = "Triton unavailable"


class GatewayError(LastmileError):
    status_code = 502
    title = "Gateway error"


class PrometheusError(LastmileError):
    status_code = 502
    title = "Prometheus error"


class StorageFull(LastmileError):
    status_code = 507
    title = "Insufficient storage"


class RuntimeSetupError(LastmileError):
    status_code = 500
    title = "Runtime setup error"


_BY_TITLE = {
    cls.__name__: cls
    for cls in (
        LastmileError,
        InvalidInput,
        InvalidModelFile,
        PipelineError,
        BadRequest,
        PayloadTooLarge,
        UnsupportedMedia,
        Unauthenticated,
        Forbidden,
        NotFound,
        Conflict,
        PreconditionFailed,
        ApiUnreachable,
        TritonError,
        TritonUnavailable,
        GatewayError,
        PrometheusError,
        RuntimeSetupError,
    )
}


def error_class(name: str) -> type[LastmileError]:
    """The error class for a problem document's ``type`` (used by the SDK); subclasses
    defined elsewhere (converters) are found once imported, else the base class stands in."""
    if name in _BY_TITLE:
        return _BY_TITLE[name]
    pending = list(LastmileError.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return LastmileError
