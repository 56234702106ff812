"""What Triton's error answers become before a client sees them (HTTP and gRPC).

Clients get the gateway's status and a message they can act on, never Triton's internals
(DESIGN §5). Measured on Triton 2.51 (tests/e2e/test_gateway_hardening_triton.py runs these):

- client mistakes answered 500 (the KServe spec asks for 400): a body that is not JSON or not
  valid JSON ("failed to parse the request JSON buffer: Invalid value. at 12") and a JSON
  document of the wrong form ("Unable to parse 'inputs': attempt to access non-existing object
  member 'inputs'", "Unable to parse 'data': Shape does not match ...");
- client mistakes answered 400: wrong input name, dtype or shape, batch over max_batch_size,
  binary sizes that do not add up; 404: unknown model or version;
- server faults answered 500 (gRPC INTERNAL) with backend internals in the text: onnxruntime's
  "Status Message: /onnxruntime_src/.../element_wise_ops.h:563 void onnxruntime::
  BroadcastIterator::Init(ptrdiff_t, ptrdiff_t) ..." (or "bfc_arena.cc:360 ..."), the Python
  backend's "Failed to process the request(s) for model 'm_0_0', message: RuntimeError: ...
  \\n\\nAt:\\n  /path/to/model.py(4): execute", and "[request id: <id_unknown>] " prefixes.

`sanitize` strips source locations, absolute paths, C++ signatures and tracebacks and keeps
the human part; internal model names (with Triton's instance suffix "_0_0") become the public
route name. Everything here runs only on the error path.
"""

from __future__ import annotations

import json
import re

BATCH_HINT = (
    " (that is the pipeline's max_batch_size: raise it for each step with "
    "`lastmile model configure MODEL --max-batch-size N`, then redeploy)"
)
MAX_MESSAGE_CHARS = 1000

# Triton 2.51 answers these client mistakes with 500 / INTERNAL.
_BAD_JSON_RE = re.compile(r"failed to parse the request JSON buffer:?\s*(.*)", re.S | re.I)
_BAD_FORM_RE = re.compile(r"Unable to parse '([^']{1,100})':?\s*(.*)", re.S)

# -- sanitizer patterns ---------------------------------------------------------------------
_UNKNOWN_ID_RE = re.compile(r"\[request id: <id_unknown>\]\s*")
# Python backend: "message: RuntimeError: boom\n\nAt:\n  /path/model.py(4): execute\n"
_PY_BACKEND_STACK_RE = re.compile(r"\n\s*At:\s*\n.*", re.S)
# CPython: "Traceback (most recent call last):\n  File "/x.py", line 3, in f\n    code\nError: m"
_PY_TRACEBACK_RE = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t]+.*\n?)*", re.M)
_PY_FILE_LINE_RE = re.compile(r'File "[^"\n]*", line \d+(?:, in [\w<>.]+)?')
# A C++ function signature as onnxruntime/Triton print them next to a source location:
# "void* onnxruntime::BFCArena::AllocateRawInternal(size_t, bool)" (return type optional).
_CPP_SIGNATURE_RE = re.compile(
    r"(?:\b(?:void|bool|int|auto|size_t|Status|[A-Za-z_]\w*(?:::\w+)+)\s*[*&]*\s+)?"
    r"\b[A-Za-z_]\w*(?:<[^<>()]*>)?(?:::~?[A-Za-z_]\w*(?:<[^<>()]*>)?)+\([^()]*\)(?:\s*const)?"
)
# Absolute paths, with an optional ":line", "(line)" or ":line:col" suffix.
_ABS_PATH_RE = re.compile(r"(?<![\w.~/-])(?:/[\w.@+~-]+){2,}(?::\d+(?::\d+)?|\(\d+\))?")
# Relative source locations: "bfc_arena.cc:360", "model.py:12", "matmul_helper.h(62)".
_SOURCE_LOCATION_RE = re.compile(
    r"\b[\w.+-]+\.(?:cc|cpp|cxx|c|h|hh|hpp|hxx|cu|cuh|py|pyx|inl)(?::\d+(?::\d+)?|\(\d+\))"
)
_SPACES_RE = re.compile(r"[ \t]{2,}")
_EMPTY_LABEL_RE = re.compile(r"(Status Message|message):\s*(?=$|[,.;])")


def sanitize(message: str) -> str:
    """`message` without source locations, paths, C++ signatures or tracebacks."""
    text = _UNKNOWN_ID_RE.sub("", message)
    text = _PY_BACKEND_STACK_RE.sub("", text)
    text = _PY_TRACEBACK_RE.sub("", text)
    text = _PY_FILE_LINE_RE.sub("", text)
    text = _ABS_PATH_RE.sub("", text)
    text = _SOURCE_LOCATION_RE.sub("", text)
    text = _CPP_SIGNATURE_RE.sub("", text)
    lines = [_SPACES_RE.sub(" ", line).strip() for line in text.splitlines()]
    text = " ".join(line for line in lines if line)
    text = _EMPTY_LABEL_RE.sub(r"\1:", text).strip(" ,;:")
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3].rstrip() + "..."
    return text


def public_names(message: str, *, internal: str, public: str) -> str:
    """Replace the Triton model name (and its instance names 'm_0_0') by the route name."""
    if internal not in message:
        return message
    pattern = re.escape(internal) + r"(?:_\d+)*(?![\w.-])"
    return re.sub(pattern, lambda _: public, message)


def client_mistake(message: str) -> str | None:
    """The gateway's own message when Triton's 500 text is really a client mistake."""
    match = _BAD_JSON_RE.match(message)
    if match:
        detail = match.group(1).strip()
        return "the request body is not valid JSON" + (f" ({detail})" if detail else "")
    match = _BAD_FORM_RE.match(message)
    if match:
        detail = match.group(2).strip()
        suffix = f": {detail}" if detail else ""
        return f"invalid inference request: cannot read {match.group(1)!r}{suffix}"
    return None


def _triton_message(body: bytes) -> str | None:
    """Triton's {"error": "..."} text, None for anything else."""
    try:
        decoded = json.loads(body)
    except ValueError:
        return None
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return None


def _finish(message: str, *, internal: str, public: str) -> str:
    message = public_names(sanitize(message), internal=internal, public=public)
    if "batch-size must be <=" in message:
        message += BATCH_HINT
    return message


def public_error(body: bytes, *, internal: str, public: str, status: int | None) -> str:
    """Triton's error text, sanitized, with the internal model name replaced by the public
    one; a batch over the limit says which setting changes the limit."""
    message = _triton_message(body)
    if message is None:
        return f"inference failed for {public!r} (upstream status {status})"
    return _finish(message, internal=internal, public=public) or (
        f"inference failed for {public!r} (upstream status {status})"
    )


def _not_loaded(message: str) -> bool:
    """Triton does not know the routed model at all (not one version of it): the route is
    live, so the model is being (re)loaded — after a Triton restart, say. That is the
    server's temporary state, not the client's mistake: 503 / UNAVAILABLE, retry."""
    return "unknown model" in message and " version " not in message


def model_not_loaded_message(details: str) -> bool:
    """A gRPC NOT_FOUND's details say the routed model is not loaded on that server."""
    return _not_loaded(details)


def model_not_loaded(status: int, body: bytes) -> bool:
    """Triton's answer says the routed model is not loaded there: no model ran the request."""
    if status != 404:
        return False
    message = _triton_message(body)
    return message is not None and _not_loaded(message)


def _unavailable(public: str) -> str:
    return f"{public!r} is not available right now (its model is being loaded); retry shortly"


def http_failure(status: int, body: bytes, *, internal: str, public: str) -> tuple[int, str]:
    """(status, message) the client gets for Triton's non-2xx answer `status` / `body`.

    Client mistakes are 400 (404 and 429 keep their meaning); server faults are 500, except
    502/503/504 which tell a client it may retry.
    """
    message = _triton_message(body)
    if status == 404 and message is not None and _not_loaded(message):
        return 503, _unavailable(public)
    if message is not None and status >= 500:
        mistake = client_mistake(message)
        if mistake is not None:
            return 400, mistake
    if 400 <= status < 500:
        code = status if status in (400, 404, 429) else 400
    else:
        code = status if status in (502, 503, 504) else 500
    return code, public_error(body, internal=internal, public=public, status=status)


# gRPC codes that say "the client asked for something wrong"; grpc_gateway keeps them as is.
GRPC_CLIENT_CODES = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "OUT_OF_RANGE",
        "FAILED_PRECONDITION",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
        "RESOURCE_EXHAUSTED",
        "CANCELLED",
    }
)
_GRPC_KEPT_SERVER_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "ABORTED"}
)


def grpc_failure(code: str, details: str, *, internal: str, public: str) -> tuple[str, str]:
    """(code name, message) the client gets for Triton's gRPC error `code` / `details`."""
    if code == "NOT_FOUND" and _not_loaded(details):
        return "UNAVAILABLE", _unavailable(public)
    if code not in GRPC_CLIENT_CODES:
        mistake = client_mistake(details)
        if mistake is not None:
            return "INVALID_ARGUMENT", mistake
        if code not in _GRPC_KEPT_SERVER_CODES:
            code = "INTERNAL"
    message = _finish(details, internal=internal, public=public)
    return code, message or f"request for {public!r} failed (upstream status {code})"


def error_class(code: int | str) -> str | None:
    """'client' or 'server' for an error status (HTTP code or gRPC code name), None for OK."""
    if isinstance(code, int):
        if 400 <= code < 500:
            return "client"
        return "server" if code >= 500 else None
    if code == "OK":
        return None
    return "client" if code in GRPC_CLIENT_CODES else "server"
