"""The only module that imports ``tritonclient`` (DESIGN §4).

It wraps the control calls Lastmile makes to a Triton server (health, repository load/unload
with config and file overrides, metadata, metrics text) with explicit timeouts, and
translates tritonclient's exceptions into Lastmile errors. It also re-exports Triton's
``ModelConfig`` protobuf schema, which the repository builder uses to build configs.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import tritonclient.http as triton_http
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from manager.errors import TritonError, TritonUnavailable

log = logging.getLogger(__name__)

ModelConfig = model_config_pb2.ModelConfig

__all__ = ["ModelConfig", "TritonClient", "model_config_pb2"]


def _host_port(url: str) -> str:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    if not parsed.hostname or not parsed.port:
        raise TritonError(
            f"invalid Triton URL {url!r}", hint="use http://HOST:PORT, e.g. http://127.0.0.1:8000"
        )
    return f"{parsed.hostname}:{parsed.port}"


class TritonClient:
    """Control-plane client for one Triton server (HTTP/REST)."""

    def __init__(
        self,
        url: str,
        *,
        metrics_url: str | None = None,
        timeout_s: float = 30.0,
        control_headers: dict[str, str] | None = None,
        grpc_url: str | None = None,
    ):
        self.url = url if "://" in url else f"http://{url}"
        self.metrics_url = metrics_url
        self.timeout_s = timeout_s
        # Triton runs with its repository API restricted to callers that send this header
        # (``--http-restricted-api``); only the manager holds it.
        self.control_headers = dict(control_headers or {})
        self._client = triton_http.InferenceServerClient(
            _host_port(url),
            connection_timeout=timeout_s,
            network_timeout=timeout_s,
            concurrency=1,
        )
        # Loads go over gRPC when the server's gRPC address is known (and its restricted
        # protocols take the same header, as ``--grpc-restricted-protocol`` names it): Triton's
        # HTTP frontend runs a load on the worker thread that received it, and every other HTTP
        # connection that thread serves (the gateway's keep-alive connections included) waits
        # for the whole load (measured: HTTP inference max = the load's 1.5-1.8 s); its gRPC
        # frontend runs a load on a thread of its own and inference on both protocols goes on
        # (max as in steady state). loadtests/bench_swaps.py shows it through the gateway.
        self.grpc_url = grpc_url
        self._grpc: Any = None

    def close(self) -> None:
        self._client.close()
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    def _grpc_client(self) -> Any:
        if self._grpc is None:
            import tritonclient.grpc as triton_grpc

            self._grpc = triton_grpc.InferenceServerClient(_host_port(str(self.grpc_url)))
        return self._grpc

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- health ---------------------------------------------------------------------------
    def is_ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # connection refused, timeout: not ready
            return False

    def is_live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_ready():
                return
            time.sleep(0.2)
        raise TritonUnavailable(
            f"Triton at {self.url} was not ready after {timeout_s:.0f} s",
            hint="check that it runs and its log for errors",
        )

    # -- repository -----------------------------------------------------------------------
    def load_model(
        self,
        name: str,
        *,
        config: Any | None = None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        """Load (or reload) a model; ``config``/``files`` push it to a Triton without shared disk.

        ``files`` maps ``"<version>/<file name>"`` to contents (Triton's ``file:`` overrides).
        """
        config_json = None
        if config is not None:
            from google.protobuf import json_format

            config_json = json_format.MessageToJson(config, preserving_proto_field_name=True)
        override = {f"file:{path}": data for path, data in (files or {}).items()} or None
        if self.grpc_url:
            self._load_over_grpc(name, config_json, override)
            return
        try:
            self._client.load_model(
                name, headers=self.control_headers, config=config_json, files=override
            )
        except InferenceServerException as exc:
            raise TritonError(
                f"Triton could not load model {name!r}: {exc.message()}",
                hint="the Triton log has the details",
            ) from exc
        except Exception as exc:
            raise TritonUnavailable(f"Triton at {self.url} is unreachable: {exc}") from exc

    def _load_over_grpc(
        self, name: str, config_json: str | None, files: dict[str, bytes] | None
    ) -> None:
        # gRPC metadata carries a restricted protocol's header under this prefix
        headers = {f"triton-grpc-protocol-{k}": v for k, v in self.control_headers.items()}
        try:
            self._grpc_client().load_model(
                name,
                headers=headers,
                config=config_json,
                files=files,
                client_timeout=self.timeout_s,
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            refused = "restricted" in (exc.message() or "")
            if not refused and status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED"):
                raise TritonUnavailable(
                    f"Triton at {self.grpc_url} is unreachable: {exc.message()}"
                ) from exc
            raise TritonError(
                f"Triton could not load model {name!r}: {exc.message()}",
                hint="the Triton log has the details",
            ) from exc

    def unload_model(self, name: str, *, unload_dependents: bool = False) -> None:
        try:
            self._client.unload_model(
                name, headers=self.control_headers, unload_dependents=unload_dependents
            )
        except InferenceServerException as exc:
            raise TritonError(f"Triton could not unload model {name!r}: {exc.message()}") from exc
        except Exception as exc:
            raise TritonUnavailable(f"Triton at {self.url} is unreachable: {exc}") from exc

    def is_model_ready(self, name: str, version: str = "") -> bool:
        try:
            return bool(self._client.is_model_ready(name, version))
        except Exception:
            return False

    def warm_up(self, name: str, inputs: list[tuple[str, str, list[int]]], count: int) -> None:
        """Send ``count`` inference requests of zeros (``inputs``: name, datatype, shape with
        -1 read as 1) to ``name``: the first requests after a load pay for lazy start-up
        (onnxruntime sessions, Python-backend imports) before any client does."""
        import numpy as np

        tensors = []
        for tensor_name, datatype, shape in inputs:
            dims = [1 if d < 0 else d for d in shape]
            tensor = triton_http.InferInput(tensor_name, dims, datatype)
            if datatype == "BYTES":
                data = np.full(dims, b"", dtype=np.object_)
            else:
                data = np.zeros(dims, dtype=triton_to_np_dtype(datatype))
            tensor.set_data_from_numpy(data, binary_data=True)
            tensors.append(tensor)
        for _ in range(count):
            try:
                self._client.infer(name, tensors)
            except InferenceServerException as exc:
                raise TritonError(f"warm-up request to {name!r} failed: {exc.message()}") from exc

    def repository_index(self) -> list[dict[str, Any]]:
        try:
            return list(self._client.get_model_repository_index(headers=self.control_headers))
        except InferenceServerException as exc:
            raise TritonError(f"Triton repository index failed: {exc.message()}") from exc
        except Exception as exc:
            raise TritonUnavailable(f"Triton at {self.url} is unreachable: {exc}") from exc

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        try:
            return dict(self._client.get_model_metadata(name, version))
        except InferenceServerException as exc:
            raise TritonError(f"no metadata for model {name!r}: {exc.message()}") from exc

    def model_config(self, name: str) -> Any:
        """The config Triton actually serves, as a ``ModelConfig`` message."""
        from google.protobuf import json_format

        try:
            data = self._client.get_model_config(name)
        except InferenceServerException as exc:
            raise TritonError(f"no config for model {name!r}: {exc.message()}") from exc
        return json_format.ParseDict(data, ModelConfig(), ignore_unknown_fields=True)

    # -- metrics --------------------------------------------------------------------------
    def metrics_text(self) -> str:
        if not self.metrics_url:
            raise TritonError(f"no metrics URL known for Triton at {self.url}")
        try:
            response = httpx.get(f"{self.metrics_url}/metrics", timeout=self.timeout_s)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise TritonUnavailable(f"cannot scrape {self.metrics_url}/metrics: {exc}") from exc
        return response.text


def config_to_text(config: Any) -> str:
    return text_format.MessageToString(config)


def config_from_text(text: str, *, where: str = "config") -> Any:
    """Parse config text with the real schema; unknown fields are an error."""
    from manager.errors import InvalidInput

    config = ModelConfig()
    try:
        text_format.Merge(text, config)
    except text_format.ParseError as exc:
        raise InvalidInput(f"{where}: {exc}", hint="see Triton's model_config.proto") from exc
    return config
