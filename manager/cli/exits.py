"""The CLI's stable exit codes (scripts branch on them; the README lists them)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from manager.errors import (
    ApiUnreachable,
    Conflict,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    PrometheusError,
    StorageFull,
    TritonError,
    Unauthenticated,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_REFUSED = 5
EXIT_INVALID_INPUT = 6
EXIT_UNAVAILABLE = 7

EXIT_CODES: Mapping[int, str] = MappingProxyType(
    {
        EXIT_OK: "ok",
        EXIT_ERROR: "error: any failure not listed below",
        EXIT_USAGE: "usage: unknown command or option, missing or malformed argument",
        EXIT_NOT_FOUND: "not found (NotFound), also a workspace you are not a member of",
        EXIT_CONFLICT: "conflict: already exists, in use, changed meanwhile "
        "(Conflict, PreconditionFailed)",
        EXIT_REFUSED: "refused: no or bad API key, role too low (Unauthenticated, Forbidden)",
        EXIT_INVALID_INPUT: "invalid input: bad name, argument or file, conversion or parity "
        "failed (InvalidInput and its subclasses)",
        EXIT_UNAVAILABLE: "unavailable: the API, Triton or the gateway cannot be reached or "
        "refused, or is full for now (ApiUnreachable, TritonError, TritonUnavailable, "
        "GatewayError, PrometheusError, StorageFull)",
    }
)
"""Exit code -> meaning: stable, for scripts (documented in the README and ``--help``)."""

EXIT_CODE_BY_ERROR: Mapping[type[BaseException], int] = MappingProxyType(
    {
        NotFound: EXIT_NOT_FOUND,
        Conflict: EXIT_CONFLICT,
        Unauthenticated: EXIT_REFUSED,
        Forbidden: EXIT_REFUSED,
        InvalidInput: EXIT_INVALID_INPUT,
        ApiUnreachable: EXIT_UNAVAILABLE,
        TritonError: EXIT_UNAVAILABLE,
        GatewayError: EXIT_UNAVAILABLE,
        PrometheusError: EXIT_UNAVAILABLE,
        StorageFull: EXIT_UNAVAILABLE,
    }
)


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception: its most specific class listed above (by MRO), else 1.

    ``SystemExit`` keeps its code, and so do click's and typer's exceptions (``Exit``, and
    usage errors, which carry ``EXIT_USAGE``); typer 0.29 vendors its own copy of click, so
    those are recognised by their ``exit_code`` attribute, not by class.
    """
    if isinstance(exc, SystemExit):
        code = exc.code
        return code if isinstance(code, int) else EXIT_OK if code is None else EXIT_ERROR
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and type(exc).__module__.split(".")[0] in ("click", "typer"):
        return code
    for cls in type(exc).__mro__:
        if cls in EXIT_CODE_BY_ERROR:
            return EXIT_CODE_BY_ERROR[cls]
    return EXIT_ERROR
