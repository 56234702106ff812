"""A Triton model configuration as a gateway client may see it: the public pipeline's interface.

Clients (tritonclient, perf_analyzer) ask for a model's configuration to learn how to call it.
What Triton holds for a pipeline is the config of an internal ensemble: its name
(``default.fraud.v3``), its steps (internal step models), its parameters, instance groups,
repository agents... none of which a client of the gateway may see (DESIGN §5). So the gateway
keeps an allow-list of the fields that describe the interface and carry no internal name:

- ``name``: replaced by the public pipeline name;
- ``platform``, ``backend``: kept, except ``platform: "ensemble"``, shown as ``""`` (HTTP) or
  left out (gRPC, proto3's default): the ensemble is how the pipeline runs, not what it is, and
  perf_analyzer, on seeing "ensemble", reads ``ensemble_scheduling`` (which is dropped) and
  asks for each step model's config (which the gateway does not serve);
- ``max_batch_size``, ``input``, ``output``: the tensors a client sends and gets; an output's
  ``label_filename`` (a file in the server's model folder) is blanked;
- ``model_transaction_policy``: whether the model is decoupled (a client must then stream);
  perf_analyzer reads it;
- ``response_cache``: whether responses may come from Triton's cache; perf_analyzer reads it.

Everything else goes: ``ensemble_scheduling`` (step model names), ``version_policy`` (Triton's
versions are not pipeline versions), ``parameters``, ``instance_group``, ``optimization``,
``dynamic_batching`` / ``sequence_batching`` (server tuning; perf_analyzer reads only their
presence, to label its report), ``batch_input`` / ``batch_output`` (filled by the server, never
sent by a client), file names, metric tags, warm-up, ``model_operations``,
``model_repository_agents``, ``model_metrics``, ``runtime``, and any field a newer Triton adds.

Also here, the other half of what the gateway tells clients about the server it fronts: the
KServe v2 extensions it lists in server metadata (`EXTENSIONS`, HTTP and gRPC alike).

Two forms of a config, both pure and off the inference path: the JSON of HTTP
``GET .../config`` and the protobuf bytes of gRPC ``ModelConfigResponse``, rewritten at the
wire level with rollout.grpc_wire (no protobuf import in the gateway).
"""

from __future__ import annotations

import json
from typing import Any

from rollout.grpc_wire import WireError, fields, string_field

__all__ = [
    "EXTENSIONS",
    "WireError",
    "public_grpc_config",
    "public_http_config",
    "public_json_config",
]

# What a client may use through the gateway, each checked against the real Triton 2.51 in
# tests/e2e/test_gateway_parity.py: binary tensors (passed through as bytes, stamped in their
# JSON header), classification (an output's `classification` parameter reaches Triton as
# sent), model configuration (the public interface, above), request parameters (passed
# through; only shared-memory ones are refused) and schedule policy (`priority` and `timeout`
# pass through). Never listed: repository, shared memory, logging, trace and statistics (not
# served, DESIGN §5) and sequence (a rollout may split one sequence over two variants).
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "parameters",
    "schedule_policy",
)

ENSEMBLE = "ensemble"
# JSON member names, in Triton's order; `name` is written first, from the route.
_KEPT_MEMBERS = (
    "platform",
    "backend",
    "max_batch_size",
    "input",
    "output",
    "model_transaction_policy",
    "response_cache",
)
# ModelConfig field numbers (tritonclient.grpc.model_config_pb2.ModelConfig.DESCRIPTOR).
_NAME, _PLATFORM, _MAX_BATCH_SIZE, _INPUT, _OUTPUT = 1, 2, 4, 5, 6
_BACKEND, _TRANSACTION_POLICY, _RESPONSE_CACHE = 17, 19, 24
_KEPT_FIELDS = frozenset(
    {_PLATFORM, _BACKEND, _MAX_BATCH_SIZE, _INPUT, _OUTPUT, _TRANSACTION_POLICY, _RESPONSE_CACHE}
)
_OUTPUT_LABEL_FILENAME = 4  # ModelOutput.label_filename
_CONFIG_RESPONSE_CONFIG = 1  # ModelConfigResponse.config
_WT_BYTES = 2
_ENSEMBLE_BYTES = ENSEMBLE.encode()


def public_json_config(config: dict[str, Any], public: str) -> dict[str, Any]:
    """The allow-listed members of Triton's JSON model config, named `public`."""
    out: dict[str, Any] = {"name": public}
    for member in _KEPT_MEMBERS:
        if member not in config:
            continue
        value = config[member]
        if member == "platform" and value == ENSEMBLE:
            value = ""
        elif member == "output" and isinstance(value, list):
            value = [_public_output(output) for output in value]
        out[member] = value
    return out


def _public_output(output: Any) -> Any:
    if isinstance(output, dict) and output.get("label_filename"):
        return {**output, "label_filename": ""}
    return output


def public_http_config(body: bytes, public: str) -> bytes | None:
    """The body of Triton's ``GET /v2/models/<internal>/config`` answer rewritten for clients;
    None when it is not a JSON object (the caller answers 502)."""
    try:
        config = json.loads(body)
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    return json.dumps(public_json_config(config, public), separators=(",", ":")).encode()


def public_grpc_config(response: bytes, public: str) -> bytes:
    """A serialized ``ModelConfigResponse`` whose ModelConfig keeps only the allow-listed
    fields, named `public`. WireError when the bytes are malformed."""
    # A message field that occurs more than once is merged, as concatenated bytes would be.
    config = b"".join(
        response[start:stop]
        for number, wire_type, _, start, stop in fields(response)
        if number == _CONFIG_RESPONSE_CONFIG and wire_type == _WT_BYTES
    )
    kept = [string_field(_NAME, public.encode())]
    for number, wire_type, field_start, start, stop in fields(config):
        if number not in _KEPT_FIELDS:
            continue
        if wire_type == _WT_BYTES:
            if number == _PLATFORM and config[start:stop] == _ENSEMBLE_BYTES:
                continue
            if number == _OUTPUT:
                kept.append(string_field(_OUTPUT, _drop_label_filename(config[start:stop])))
                continue
        kept.append(config[field_start:stop])
    return string_field(_CONFIG_RESPONSE_CONFIG, b"".join(kept))


def _drop_label_filename(output: bytes) -> bytes:
    return b"".join(
        output[field_start:stop]
        for number, _, field_start, _, stop in fields(output)
        if number != _OUTPUT_LABEL_FILENAME
    )
