"""Python SDK: the same operations as the CLI, against a running management API and gateway.

from manager.sdk import Lastmile
lm = Lastmile.from_home(".lastmile")          # or Lastmile("http://127.0.0.1:8080")
lm.import_model("scaler.onnx", name="scaler")
lm.create_pipeline("fraud", steps=["scaler", "classifier:1"])
lm.deploy("fraud")
lm.infer("fraud", {"x": [[0.1, 0.2, 0.3, 0.4]]})
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from manager.domain import NUMPY_DTYPES
from manager.errors import InvalidInput, LastmileError, TritonUnavailable, error_class
from manager.names import check_name
from manager.settings import Settings


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and "detail" in body and "type" in body:
        cls = error_class(str(body["type"]))
        raise cls(str(body["detail"]), hint=body.get("hint"))
    if isinstance(body, dict) and "error" in body:  # KServe error from the gateway
        raise LastmileError(f"{response.status_code}: {body['error']}")
    raise LastmileError(f"{response.request.url} answered {response.status_code}: {response.text}")


def load_pipeline_yaml(path: Path) -> Any:
    """Read a pipeline definition; YAML errors name the file, line and column."""
    import yaml

    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise InvalidInput(
            f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})",
            hint="check the indentation and the quoting near that place",
        ) from exc


class Lastmile:
    def __init__(
        self,
        api_url: str,
        *,
        gateway_url: str | None = None,
        workspace: str = "default",
        timeout_s: float = 300.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.workspace = check_name(workspace, kind="workspace")
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout_s)
        self._gateway_url = gateway_url

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Lastmile:
        """Find the running system through the state file in ``LASTMILE_HOME``."""
        from manager.system import read_state

        state = read_state(settings)
        if state is None:
            raise TritonUnavailable(
                f"nothing is running for LASTMILE_HOME={settings.home}",
                hint="start it with: lastmile up --detach",
            )
        return cls(state["api"]["url"], gateway_url=state["gateway"]["http"], **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Lastmile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise TritonUnavailable(
                f"the management API at {self.api_url} is unreachable: {exc}",
                hint="is it running? lastmile status",
            ) from exc
        _raise_for_problem(response)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    @property
    def gateway_url(self) -> str:
        if self._gateway_url is None:
            self._gateway_url = self.status()["gateway"]["http"]
        return self._gateway_url

    # -- control plane ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", "/v1/status"))

    def import_model(
        self,
        source: str | Path | object,
        *,
        name: str,
        framework: str = "onnx",
        inputs: list[str] | None = None,
        sample_input: Any = None,
        trust_pickle: bool = False,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        optimize: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """Register a model version. ``source`` is a file (converted on the server when it is
        not ONNX) or an in-memory model (a torch module, an sklearn estimator, a booster):
        that one is converted here, parity-checked on ``sample_input``, and its ONNX uploaded
        with the conversion report."""
        check_name(name, kind="model")
        if isinstance(source, (str, Path)):
            return self._upload(
                Path(source),
                name,
                params={
                    "framework": framework,
                    "inputs": inputs or [],
                    "trust_pickle": trust_pickle,
                    "rtol": rtol,
                    "atol": atol,
                    "optimize": list(optimize),
                },
            )
        import tempfile

        from converters.api import convert, parse_input_spec

        with tempfile.TemporaryDirectory(prefix="lastmile-convert-") as work:
            report = convert(
                source,
                framework=framework,
                out_dir=Path(work) / "out",
                inputs=[parse_input_spec(t) for t in inputs or ()] or None,
                sample_input=sample_input,
                rtol=rtol,
                atol=atol,
                optimize=optimize,
                max_bytes=Settings().max_upload_bytes,
            )
            header = base64.b64encode(json.dumps(report.record()).encode()).decode()
            return self._upload(report.chosen_path, name, headers={"x-lastmile-conversion": header})

    def _upload(
        self,
        path: Path,
        name: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file", hint="give the path of a model file")

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk

        return dict(
            self._call(
                "POST",
                f"/v1/workspaces/{self.workspace}/models/{name}/versions",
                content=chunks(),
                params={"filename": path.name, **(params or {})},
                headers={
                    "content-type": "application/octet-stream",
                    "content-length": str(path.stat().st_size),
                    **(headers or {}),
                },
            )
        )

    def configure_model(self, name: str, **options: Any) -> dict[str, Any]:
        """Set how Triton serves ``name``: tuning=[...], instances=, gpus=, max_batch_size=,
        preferred_batch_sizes=, max_queue_delay_us=, response_cache=, warmup=."""
        check_name(name, kind="model")
        return dict(
            self._call(
                "PUT", f"/v1/workspaces/{self.workspace}/models/{name}/serving", json=options
            )
        )

    def templates(self) -> list[dict[str, str]]:
        return list(self._call("GET", "/v1/templates"))

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v1/workspaces/{self.workspace}/models"))

    def create_pipeline(self, name: str, *, steps: list[str]) -> dict[str, Any]:
        return dict(
            self._call(
                "POST",
                f"/v1/workspaces/{self.workspace}/pipelines",
                json={"name": name, "steps": steps},
            )
        )

    def apply_pipeline(self, definition: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        """Create a pipeline version from a DAG definition: a dict, or a YAML file's path."""
        document = (
            load_pipeline_yaml(Path(definition))
            if isinstance(definition, (str, Path))
            else dict(definition)
        )
        return dict(
            self._call("POST", f"/v1/workspaces/{self.workspace}/pipelines/apply", json=document)
        )

    def pipelines(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/v1/workspaces/{self.workspace}/pipelines"))

    def deploy(self, pipeline: str, *, version: int | None = None) -> dict[str, Any]:
        check_name(pipeline, kind="pipeline")
        return dict(
            self._call(
                "POST",
                f"/v1/workspaces/{self.workspace}/pipelines/{pipeline}/deploy",
                json={"version": version},
            )
        )

    def export_pipeline(
        self,
        pipeline: str,
        out_dir: str | Path,
        *,
        version: int | None = None,
        profile: str = "gpu",
    ) -> dict[str, Any]:
        """Write the pipeline as a Triton repository into ``out_dir`` (new or empty)."""
        check_name(pipeline, kind="pipeline")
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise InvalidInput(f"{out} is not empty", hint="export into a new or empty folder")
        params: dict[str, Any] = {"profile": profile}
        if version is not None:
            params["version"] = version
        response = self._request(
            "GET", f"/v1/workspaces/{self.workspace}/pipelines/{pipeline}/export", params=params
        )
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            tar.extractall(out, filter="data")
        models = sorted(p.name for p in out.iterdir() if (p / "config.pbtxt").is_file())
        return {"pipeline": pipeline, "path": str(out), "models": models}

    def import_repository(self, root: str | Path) -> dict[str, Any]:
        """Register a Triton repository folder: models with versions, ensembles as pipelines."""
        root = Path(root)
        if not root.is_dir():
            raise InvalidInput(f"{root} is not a folder", hint="give a Triton model repository")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(root, arcname=".")
        return dict(
            self._call(
                "POST",
                f"/v1/workspaces/{self.workspace}/repository/import",
                content=buffer.getvalue(),
                headers={"content-type": "application/gzip"},
            )
        )

    def deployments(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/deployments"))

    def metrics(self, *, model: str | None = None, scrape: bool = False) -> list[dict[str, Any]]:
        if scrape:
            self._call("POST", "/v1/metrics/scrape")
        params = {"model": model} if model else None
        return list(self._call("GET", "/v1/metrics", params=params))

    # -- data plane (through the gateway, KServe v2 JSON) ----------------------------------
    def metadata(self, pipeline: str) -> dict[str, Any]:
        check_name(pipeline, kind="pipeline")
        response = httpx.get(f"{self.gateway_url}/v2/models/{pipeline}", timeout=30)
        _raise_for_problem(response)
        return dict(response.json())

    def infer(self, pipeline: str, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Send one request through the gateway; inputs are arrays or nested lists."""
        meta = self.metadata(pipeline)
        wanted = {t["name"]: t for t in meta["inputs"]}
        unknown = set(inputs) - set(wanted)
        missing = set(wanted) - set(inputs)
        if unknown or missing:
            raise InvalidInput(
                f"pipeline {pipeline!r} takes inputs {sorted(wanted)}; got {sorted(inputs)}",
                hint="give each input once: --input NAME=JSON_ARRAY",
            )
        tensors = []
        for name, value in inputs.items():
            datatype = wanted[name]["datatype"]
            dtype = NUMPY_DTYPES.get(datatype)
            if dtype is None:
                raise InvalidInput(f"input {name!r} has datatype {datatype}, not supported here")
            try:
                array = np.asarray(value, dtype=dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"input {name!r}: {exc}") from exc
            tensors.append(
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "data": array.flatten().tolist(),
                }
            )
        response = httpx.post(
            f"{self.gateway_url}/v2/models/{pipeline}/infer",
            json={"inputs": tensors},
            timeout=60,
        )
        _raise_for_problem(response)
        result = {}
        for out in response.json()["outputs"]:
            dtype = NUMPY_DTYPES.get(out["datatype"], np.float64)
            result[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        return result
