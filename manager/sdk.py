"""Python SDK: typed methods mirroring the management API, and the data-plane helpers.

    from manager.sdk import Lastmile
    lm = Lastmile("http://127.0.0.1:8080", api_key="lm_...", workspace="fraud-team")
    # or, on the machine that runs `lastmile up`: Lastmile.from_settings(Settings())
    lm.import_model("scaler.onnx", name="scaler")
    lm.create_pipeline("fraud", steps=["scaler", "classifier:1"])
    lm.deploy("fraud", version="latest")
    lm.infer("fraud", {"x": [[0.1, 0.2, 0.3, 0.4]]})

Errors are the server's own exception classes (``manager.errors``): a 422 is ``InvalidInput``,
a 404 ``NotFound``, a 401 ``Unauthenticated``; an API that cannot be reached is
``ApiUnreachable``, never a Triton error.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np

from manager.domain import NUMPY_DTYPES
from manager.errors import (
    ApiUnreachable,
    GatewayError,
    InvalidInput,
    LastmileError,
    NotFound,
    TritonUnavailable,
    Unauthenticated,
    error_class,
)
from manager.names import check_name
from manager.settings import Settings

API = "/api/v1"


def _raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    if isinstance(body, dict) and "detail" in body and "type" in body:
        cls = error_class(str(body["type"]))
        if cls is LastmileError and response.status_code != 500:
            cls = _by_status(response.status_code)
        raise cls(str(body["detail"]), hint=body.get("hint"))
    if isinstance(body, dict) and "error" in body:  # KServe error from the gateway
        raise _gateway_error(response.status_code, str(body["error"]))
    raise _by_status(response.status_code)(
        f"{response.request.url} answered {response.status_code}: {response.text[:300]}"
    )


def _by_status(status: int) -> type[LastmileError]:
    for cls in (InvalidInput, NotFound, Unauthenticated, TritonUnavailable):
        if cls.status_code == status:
            return cls
    return error_class({400: "BadRequest", 403: "Forbidden", 409: "Conflict"}.get(status, ""))


def _gateway_error(status: int, message: str) -> LastmileError:
    if "batch-size must be <=" in message or ("batch size" in message and "exceeds" in message):
        return InvalidInput(
            message,
            hint="the request has more rows than the pipeline's max_batch_size: raise it with "
            "lastmile model configure MODEL --max-batch-size N for each step, then redeploy",
        )
    if status == 404:
        return NotFound(message, hint="lastmile deployment list shows what is live")
    if status in (400, 422):
        return InvalidInput(message)
    if status == 503:
        return TritonUnavailable(message)
    return GatewayError(f"{status}: {message}")


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


def read_credentials(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_connection(settings: Settings) -> tuple[str, str | None, str | None]:
    """(API URL, API key, gateway URL) from settings, ``lastmile login`` and the state file."""
    from manager.state_file import read_state

    state = read_state(settings)
    api_url = settings.api_url or (state["api"]["url"] if state else None)
    if api_url is None:
        raise ApiUnreachable(
            f"nothing is running for LASTMILE_HOME={settings.home} and no API URL is set",
            hint="start it with: lastmile up --detach, or set LASTMILE_API_URL",
        )
    key = settings.api_key.get_secret_value() if settings.api_key else None
    if key is None:
        saved = read_credentials(settings.credentials_path).get("servers", {})
        key = saved.get(api_url.rstrip("/"), {}).get("key")
    if key is None and state is not None:
        try:
            key = settings.owner_key_path.read_text().strip() or None
        except OSError:
            key = None
    gateway = state["gateway"]["http"] if state and not settings.api_url else None
    return api_url, key, gateway


class Lastmile:
    def __init__(
        self,
        api_url: str,
        *,
        api_key: str | None = None,
        gateway_url: str | None = None,
        workspace: str = "default",
        timeout_s: float = 300.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.workspace = check_name(workspace, kind="workspace")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.api_url, timeout=timeout_s, headers=headers)
        self._gateway_url = gateway_url

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Lastmile:
        """Connect as the CLI does: LASTMILE_API_URL / _API_KEY / _WORKSPACE, the key saved by
        ``lastmile login``, or the local system's state file and owner key."""
        api_url, key, gateway = resolve_connection(settings)
        kwargs.setdefault("workspace", settings.workspace)
        return cls(api_url, api_key=key, gateway_url=gateway, **kwargs)

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
            raise ApiUnreachable(
                f"Lastmile API not reachable at {self.api_url}: {exc}",
                hint="is it running? lastmile up --detach; or check LASTMILE_API_URL",
            ) from exc
        _raise_for_problem(response)
        return response

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        return None if response.status_code == 204 else response.json()

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> list[Any]:
        items: list[Any] = []
        query = dict(params or {})
        while True:
            page = self._call("GET", path, params=query)
            items += page["items"]
            if not page.get("next_cursor"):
                return items
            query["cursor"] = page["next_cursor"]

    def _ws(self, workspace: str | None = None) -> str:
        return f"{API}/workspaces/{check_name(workspace or self.workspace, kind='workspace')}"

    @property
    def gateway_url(self) -> str:
        if self._gateway_url is None:
            self._gateway_url = self.status()["gateway"]["http"]
        return self._gateway_url

    # -- who and where -----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return dict(self._call("GET", f"{API}/status"))

    def whoami(self) -> dict[str, Any]:
        return dict(self._call("GET", f"{API}/whoami"))

    def templates(self) -> list[dict[str, str]]:
        return list(self._call("GET", f"{API}/templates"))

    # -- workspaces, members, principals, keys -----------------------------------------------
    def workspaces(self) -> list[dict[str, Any]]:
        return self._pages(f"{API}/workspaces")

    def create_workspace(self, name: str) -> dict[str, Any]:
        return dict(self._call("POST", f"{API}/workspaces", json={"name": name}))

    def get_workspace(self, name: str | None = None) -> dict[str, Any]:
        return dict(self._call("GET", self._ws(name)))

    def delete_workspace(self, name: str) -> None:
        self._call("DELETE", self._ws(name))

    def members(self, workspace: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{self._ws(workspace)}/members"))

    def set_member(self, principal: str, role: str, *, workspace: str | None = None) -> Any:
        check_name(principal, kind="principal")
        return self._call("PUT", f"{self._ws(workspace)}/members/{principal}", json={"role": role})

    def remove_member(self, principal: str, *, workspace: str | None = None) -> None:
        check_name(principal, kind="principal")
        self._call("DELETE", f"{self._ws(workspace)}/members/{principal}")

    def create_service_key(
        self, name: str, *, role: str = "editor", expires_in_days: int | None = None
    ) -> dict[str, Any]:
        body = {"name": name, "role": role, "expires_in_days": expires_in_days}
        return dict(self._call("POST", f"{self._ws()}/service-keys", json=body))

    def service_keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{self._ws()}/service-keys"))

    def create_principal(
        self,
        name: str,
        *,
        workspace: str | None = None,
        role: str | None = None,
        expires_in_days: int | None = None,
    ) -> dict[str, Any]:
        body = {
            "name": name,
            "workspace": workspace,
            "role": role,
            "expires_in_days": expires_in_days,
        }
        return dict(self._call("POST", f"{API}/principals", json=body))

    def principals(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{API}/principals"))

    def create_key(
        self, *, label: str = "", principal: str | None = None, expires_in_days: int | None = None
    ) -> dict[str, Any]:
        body = {"label": label, "principal": principal, "expires_in_days": expires_in_days}
        return dict(self._call("POST", f"{API}/keys", json=body))

    def keys(self, *, principal: str | None = None) -> list[dict[str, Any]]:
        params = {"principal": principal} if principal else None
        return list(self._call("GET", f"{API}/keys", params=params))

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"{API}/keys/{key_id}"))

    # -- models ------------------------------------------------------------------------------
    def import_model(
        self,
        source: str | Path | object,
        *,
        name: str,
        framework: str | None = None,
        inputs: list[str] | None = None,
        sample_input: Any = None,
        trust_pickle: bool = False,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        optimize: tuple[str, ...] = (),
        force: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Register a model version. ``source`` is a file (converted on the server when it is
        not ONNX, with ``sample_input`` rows for the parity check) or an in-memory model (a
        torch module, an sklearn estimator, a booster): that one is converted here,
        parity-checked on ``sample_input``, and its ONNX uploaded with the conversion report
        (which the server keeps marked as client-supplied)."""
        check_name(name, kind="model")
        params: dict[str, Any] = {
            "inputs": inputs or [],
            "trust_pickle": trust_pickle,
            "rtol": rtol,
            "atol": atol,
            "optimize": list(optimize),
            "force": force,
        }
        if framework:
            params["framework"] = framework
        if isinstance(source, (str, Path)):
            return self._upload(
                Path(source), name, params=params, sample=sample_input, progress=progress
            )
        import tempfile

        from converters.api import convert, parse_input_spec

        with tempfile.TemporaryDirectory(prefix="lastmile-convert-") as work:
            report = convert(
                source,
                framework=framework or "onnx",
                out_dir=Path(work) / "out",
                inputs=[parse_input_spec(t) for t in inputs or ()] or None,
                sample_input=sample_input,
                rtol=rtol,
                atol=atol,
                optimize=optimize,
                max_bytes=Settings().max_upload_bytes,
            )
            header = base64.b64encode(json.dumps(report.record()).encode()).decode()
            return self._upload(
                report.chosen_path,
                name,
                params={"force": force},
                headers={"x-lastmile-conversion": header},
                sample=sample_input,  # the server keeps its summaries as the import baseline
                progress=progress,
            )

    def _upload(
        self,
        path: Path,
        name: str,
        *,
        params: dict[str, Any],
        headers: dict[str, str] | None = None,
        sample: Any = None,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file", hint="give the path of a model file")
        url = f"{self._ws()}/models/{name}/versions"
        if sample is not None:
            from manager.model_files import sample_to_npz_bytes

            with open(path, "rb") as f:
                files = {
                    "file": (path.name, f, "application/octet-stream"),
                    "sample": ("sample.npz", sample_to_npz_bytes(sample), "application/x-npz"),
                }
                return dict(
                    self._call("POST", url, files=files, params=params, headers=headers or {})
                )

        def chunks() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk
                    sent += len(chunk)
                    if progress is not None:
                        progress(sent)

        return dict(
            self._call(
                "POST",
                url,
                content=chunks(),
                params={"filename": path.name, **params},
                headers={
                    "content-type": "application/octet-stream",
                    "content-length": str(path.stat().st_size),
                    **(headers or {}),
                },
            )
        )

    def models(self, *, name_prefix: str | None = None) -> list[dict[str, Any]]:
        params = {"name_prefix": name_prefix} if name_prefix else None
        return self._pages(f"{self._ws()}/models", params)

    def model(self, name: str) -> dict[str, Any]:
        check_name(name, kind="model")
        return dict(self._call("GET", f"{self._ws()}/models/{name}"))

    def model_version(self, name: str, version: int) -> dict[str, Any]:
        check_name(name, kind="model")
        return dict(self._call("GET", f"{self._ws()}/models/{name}/versions/{int(version)}"))

    def download_model(self, name: str, version: int, dest: str | Path) -> Path:
        check_name(name, kind="model")
        dest = Path(dest)
        url = f"{self._ws()}/models/{name}/versions/{int(version)}/artifact"
        try:
            with self._http.stream("GET", url) as response:
                if not response.is_success:
                    response.read()
                    _raise_for_problem(response)
                tmp = dest.with_name(f".{dest.name}.part")
                with open(tmp, "wb") as out:
                    for chunk in response.iter_bytes(1024 * 1024):
                        out.write(chunk)
                tmp.replace(dest)
        except httpx.TransportError as exc:
            raise ApiUnreachable(f"Lastmile API not reachable at {self.api_url}: {exc}") from exc
        return dest

    def delete_model_version(self, name: str, version: int) -> None:
        check_name(name, kind="model")
        self._call("DELETE", f"{self._ws()}/models/{name}/versions/{int(version)}")

    def serving(self, name: str) -> dict[str, Any]:
        check_name(name, kind="model")
        response = self._request("GET", f"{self._ws()}/models/{name}/serving")
        return dict(response.json()) | {"etag": response.headers.get("etag")}

    def configure_model(
        self, name: str, *, if_match: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Set how Triton serves ``name``: tuning=[...], instances=, gpus=, max_batch_size=,
        preferred_batch_sizes=, max_queue_delay_us=, response_cache=, warmup=. ``if_match``
        (the ETag of :meth:`serving`) makes it fail with 412 if someone changed it since."""
        check_name(name, kind="model")
        headers = {"if-match": if_match} if if_match else {}
        response = self._request(
            "PUT", f"{self._ws()}/models/{name}/serving", json=options, headers=headers
        )
        return dict(response.json()) | {"etag": response.headers.get("etag")}

    # -- pipelines ---------------------------------------------------------------------------
    def create_pipeline(self, name: str, *, steps: list[str]) -> dict[str, Any]:
        return self.apply_pipeline({"name": name, "steps": steps})

    def apply_pipeline(
        self, definition: Mapping[str, Any] | str | Path, *, if_match: str | None = None
    ) -> dict[str, Any]:
        """Create a pipeline version from a definition: a dict, or a YAML file's path."""
        document = (
            load_pipeline_yaml(Path(definition))
            if isinstance(definition, (str, Path))
            else dict(definition)
        )
        headers = {"if-match": if_match} if if_match else {}
        return dict(self._call("POST", f"{self._ws()}/pipelines", json=document, headers=headers))

    def validate_pipeline(self, definition: Mapping[str, Any] | str | Path) -> dict[str, Any]:
        document = (
            load_pipeline_yaml(Path(definition))
            if isinstance(definition, (str, Path))
            else dict(definition)
        )
        return dict(self._call("POST", f"{self._ws()}/pipelines/validate", json=document))

    def pipelines(self) -> list[dict[str, Any]]:
        return self._pages(f"{self._ws()}/pipelines")

    def pipeline(self, name: str, *, version: int | None = None) -> dict[str, Any]:
        check_name(name, kind="pipeline")
        path = f"{self._ws()}/pipelines/{name}"
        if version is not None:
            path += f"/versions/{int(version)}"
        return dict(self._call("GET", path))

    def pipeline_versions(self, name: str) -> list[dict[str, Any]]:
        check_name(name, kind="pipeline")
        return list(self._call("GET", f"{self._ws()}/pipelines/{name}/versions"))

    def delete_pipeline(self, name: str) -> None:
        check_name(name, kind="pipeline")
        self._call("DELETE", f"{self._ws()}/pipelines/{name}")

    # -- deployments -------------------------------------------------------------------------
    def deploy(self, pipeline: str, *, version: int | Literal["latest"]) -> dict[str, Any]:
        """Put ``version`` of ``pipeline`` live; ``latest`` must be said explicitly."""
        check_name(pipeline, kind="pipeline")
        return dict(
            self._call(
                "POST",
                f"{self._ws()}/deployments",
                json={"pipeline": pipeline, "version": version},
            )
        )

    def undeploy(self, pipeline: str) -> dict[str, Any]:
        check_name(pipeline, kind="pipeline")
        return dict(self._call("DELETE", f"{self._ws()}/deployments/{pipeline}"))

    def rollback(self, pipeline: str, *, version: int | None = None) -> dict[str, Any]:
        check_name(pipeline, kind="pipeline")
        return dict(
            self._call(
                "POST",
                f"{self._ws()}/deployments/{pipeline}/rollback",
                json={"version": version},
            )
        )

    def deployment(self, pipeline: str) -> dict[str, Any]:
        check_name(pipeline, kind="pipeline")
        return dict(self._call("GET", f"{self._ws()}/deployments/{pipeline}"))

    def deployments(self) -> list[dict[str, Any]]:
        return list(self._call("GET", f"{self._ws()}/deployments"))

    def deployment_history(self, pipeline: str) -> list[dict[str, Any]]:
        check_name(pipeline, kind="pipeline")
        return self._pages(f"{self._ws()}/deployments/{pipeline}/history")

    # -- rollouts ----------------------------------------------------------------------------
    def start_rollout(
        self,
        pipeline: str,
        *,
        strategy: Literal["hot-swap", "canary", "ab", "shadow", "blue-green"],
        candidates: list[int],
        **params: Any,
    ) -> dict[str, Any]:
        """Start a rollout of ``pipeline`` from its live version to ``candidates``.

        ``params`` by strategy: canary ``steps``, ``interval_s``, ``min_requests``, ``gates``;
        ab ``weights`` ({version: percent}, summing to 100), ``sticky_header``,
        ``sticky_parameter``; shadow ``sample``, ``timeout_s``, ``max_queue``, ``tolerance``;
        all but hot-swap ``candidate_servers`` (K: the candidates' traffic goes to K servers of
        the Triton pool of their own, the stable version's to the others).
        """
        check_name(pipeline, kind="pipeline")
        body = {"strategy": strategy, "candidates": candidates, "params": params}
        return dict(self._call("POST", f"{self._ws()}/pipelines/{pipeline}/rollouts", json=body))

    def rollout(self, pipeline: str, rollout_id: int | None = None) -> dict[str, Any]:
        """A rollout with its log: ``rollout_id``, else the active one, else the latest."""
        check_name(pipeline, kind="pipeline")
        which = "current" if rollout_id is None else str(int(rollout_id))
        return dict(self._call("GET", f"{self._ws()}/pipelines/{pipeline}/rollouts/{which}"))

    def rollouts(self, pipeline: str) -> list[dict[str, Any]]:
        check_name(pipeline, kind="pipeline")
        return list(self._call("GET", f"{self._ws()}/pipelines/{pipeline}/rollouts"))

    def rollout_action(
        self, pipeline: str, action: str, *, version: int | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """pause | resume | promote | rollback | abort | switch on the active rollout."""
        check_name(pipeline, kind="pipeline")
        return dict(
            self._call(
                "POST",
                f"{self._ws()}/pipelines/{pipeline}/rollouts/current/{action}",
                json={"version": version, "reason": reason},
            )
        )

    def rollout_report(self, pipeline: str) -> dict[str, Any]:
        """Per-variant figures since the rollout began, and the shadow output diff."""
        check_name(pipeline, kind="pipeline")
        return dict(self._call("GET", f"{self._ws()}/pipelines/{pipeline}/rollouts/current/report"))

    def history(self, pipeline: str) -> list[dict[str, Any]]:
        """Deployments and rollout steps of ``pipeline`` as one timeline, newest first."""
        check_name(pipeline, kind="pipeline")
        return list(self._call("GET", f"{self._ws()}/pipelines/{pipeline}/history"))

    # -- data capture ------------------------------------------------------------------------
    def set_capture(self, pipeline: str, rate: float) -> dict[str, Any]:
        """Sample ``rate`` (0..1) of the pipeline's inference calls for data capture."""
        check_name(pipeline, kind="pipeline")
        path = f"{self._ws()}/pipelines/{pipeline}/capture"
        return dict(self._call("PUT", path, json={"rate": rate}))

    def capture(
        self, pipeline: str, *, since: datetime | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """The capture rate and per-tensor summaries of captured windows since ``since``."""
        check_name(pipeline, kind="pipeline")
        params: dict[str, Any] = {}
        if since is not None:
            params["since"] = since.isoformat()
        if version is not None:
            params["version"] = version
        path = f"{self._ws()}/pipelines/{pipeline}/capture"
        return dict(self._call("GET", path, params=params))

    def metrics_chart(
        self,
        pipeline: str,
        *,
        figure: str = "p99",
        since: str = "1h",
        source: str = "direct",
        fmt: str = "svg",
    ) -> bytes:
        """A chart of one live figure (p50, p95, p99, requests, errors) per variant."""
        check_name(pipeline, kind="pipeline")
        params = {"figure": figure, "since": since, "source": source, "fmt": fmt}
        path = f"{self._ws()}/pipelines/{pipeline}/metrics/chart"
        return bytes(self._request("GET", path, params=params).content)

    def summarise_capture(self) -> dict[str, Any]:
        """Summarise the captured traffic waiting in the gateway's spool now (owner)."""
        return dict(self._call("POST", f"{API}/capture/summarise"))

    # -- baselines ---------------------------------------------------------------------------
    def baselines(self, *, model: str | None = None) -> list[dict[str, Any]]:
        """The workspace's baselines (with ``model``: that model's import baselines)."""
        params = {"model": check_name(model, kind="model")} if model else None
        return list(self._call("GET", f"{self._ws()}/baselines", params=params))

    def baseline(self, name: str) -> dict[str, Any]:
        check_name(name, kind="baseline")
        return dict(self._call("GET", f"{self._ws()}/baselines/{name}"))

    def create_baseline_from_capture(
        self,
        name: str,
        *,
        pipeline: str,
        since: datetime,
        until: datetime,
        version: int | None = None,
    ) -> dict[str, Any]:
        """A baseline of the pipeline's captured windows starting in [since, until)."""
        check_name(name, kind="baseline")
        check_name(pipeline, kind="pipeline")
        body: dict[str, Any] = {
            "name": name,
            "pipeline": pipeline,
            "since": since.isoformat(),
            "until": until.isoformat(),
        }
        if version is not None:
            body["version"] = version
        return dict(self._call("POST", f"{self._ws()}/baselines", json=body))

    def upload_baseline(
        self,
        name: str,
        path: str | Path,
        *,
        tensor: str | None = None,
        side: Literal["inputs", "outputs"] = "inputs",
    ) -> dict[str, Any]:
        """A baseline from a file of rows: ``.npy`` or ``.csv``/``.parquet`` (one tensor,
        named by ``tensor``; CSV/Parquet columns are its elements) or ``.npz`` (one tensor
        per array)."""
        check_name(name, kind="baseline")
        path = Path(path)
        if not path.is_file():
            raise InvalidInput(f"{path} is not a file", hint="give a .npy, .npz, .csv or .parquet")
        data: dict[str, str] = {"side": side}
        if tensor is not None:
            data["tensor"] = tensor
        with open(path, "rb") as f:
            files = {"file": (path.name, f, "application/octet-stream")}
            url = f"{self._ws()}/baselines/{name}/file"
            return dict(self._call("POST", url, files=files, data=data))

    def delete_baseline(self, name: str) -> None:
        """Delete a baseline no assay uses."""
        check_name(name, kind="baseline")
        self._call("DELETE", f"{self._ws()}/baselines/{name}")

    # -- assays ------------------------------------------------------------------------------
    def create_assay(self, name: str, pipeline: str, **spec: Any) -> dict[str, Any]:
        """A drift assay (``tensor=``, ``side=``, ``element=``, ``baseline=``, ``binning=``,
        ``metric=``, ``min_values=``) or a health assay (``kind="health"``, ``figure=``), with
        ``window_s``, ``interval_s``, ``warning``, ``alert``, ``on_alert``,
        ``webhook_url``/``_secret``."""
        body = {"name": name, "pipeline": pipeline, **spec}
        return dict(self._call("POST", f"{self._ws()}/assays", json=body))

    def assays(self, pipeline: str | None = None) -> list[dict[str, Any]]:
        params = {"pipeline": pipeline} if pipeline else None
        return list(self._call("GET", f"{self._ws()}/assays", params=params))

    def assay(self, name: str) -> dict[str, Any]:
        return dict(self._call("GET", f"{self._ws()}/assays/{check_name(name, kind='assay')}"))

    def enable_assay(self, name: str, enabled: bool = True) -> dict[str, Any]:
        path = f"{self._ws()}/assays/{check_name(name, kind='assay')}"
        return dict(self._call("PATCH", path, json={"enabled": enabled}))

    def delete_assay(self, name: str) -> None:
        self._call("DELETE", f"{self._ws()}/assays/{check_name(name, kind='assay')}")

    def run_assay(self, name: str) -> dict[str, Any]:
        """Judge the assay's latest complete window now."""
        path = f"{self._ws()}/assays/{check_name(name, kind='assay')}/run"
        return dict(self._call("POST", path))

    def backfill_assay(
        self, name: str, since: datetime, until: datetime | None = None
    ) -> dict[str, Any]:
        """What the assay would have said over [since, until] (kept apart, no alerts)."""
        body = {"since": since.isoformat(), "until": until.isoformat() if until else None}
        path = f"{self._ws()}/assays/{check_name(name, kind='assay')}/backfill"
        return dict(self._call("POST", path, json=body))

    def assay_results(
        self,
        name: str,
        *,
        since: datetime | None = None,
        backfill: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"backfill": backfill}
        if since is not None:
            params["since"] = since.isoformat()
        if limit is not None:
            params["limit"] = limit
        path = f"{self._ws()}/assays/{check_name(name, kind='assay')}/results"
        return dict(self._call("GET", path, params=params))

    def alerts(self, assay: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if assay is not None:
            params["assay"] = assay
        return list(self._call("GET", f"{self._ws()}/alerts", params=params))

    def assay_chart(
        self,
        name: str,
        *,
        kind: str = "scores",
        fmt: str = "svg",
        since: datetime | None = None,
        backfill: bool = False,
    ) -> bytes:
        """The chart as SVG or PNG bytes: "scores" over time, or the latest "histogram"."""
        params: dict[str, Any] = {"kind": kind, "fmt": fmt, "backfill": backfill}
        if since is not None:
            params["since"] = since.isoformat()
        path = f"{self._ws()}/assays/{check_name(name, kind='assay')}/chart"
        return bytes(self._request("GET", path, params=params).content)

    # -- repositories ------------------------------------------------------------------------
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
        response = self._request("GET", f"{self._ws()}/pipelines/{pipeline}/export", params=params)
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            tar.extractall(out, filter="data")
        models = sorted(p.name for p in out.iterdir() if (p / "config.pbtxt").is_file())
        return {"pipeline": pipeline, "path": str(out), "models": models}

    def cluster(self, pipeline: str) -> dict[str, Any]:
        """The pipeline's size on a cluster: replicas, gpus, gateway_replicas (its own, else
        the defaults) and which ones it sets."""
        check_name(pipeline, kind="pipeline")
        return dict(self._call("GET", f"{self._ws()}/pipelines/{pipeline}/cluster"))

    def set_cluster(self, pipeline: str, **changes: int | None) -> dict[str, Any]:
        """Set replicas, gpus or gateway_replicas (None: back to the default)."""
        check_name(pipeline, kind="pipeline")
        return dict(self._call("PUT", f"{self._ws()}/pipelines/{pipeline}/cluster", json=changes))

    def export_k8s(
        self, pipeline: str, out_dir: str | Path, *, version: int | None = None, **params: Any
    ) -> dict[str, Any]:
        """Write the pipeline as a Kustomize folder (``kubectl apply -k out_dir``) into
        ``out_dir`` (new or empty). ``params``: overlay, replicas, gpus, gateway_replicas (by
        default the pipeline's own, ``set_cluster``), namespace, image, repository_url."""
        check_name(pipeline, kind="pipeline")
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise InvalidInput(f"{out} is not empty", hint="export into a new or empty folder")
        query = {k: v for k, v in params.items() if v is not None}
        if version is not None:
            query["version"] = version
        response = self._request(
            "GET", f"{self._ws()}/pipelines/{pipeline}/export/k8s", params=query
        )
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
            tar.extractall(out, filter="data")
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        return {"pipeline": pipeline, "path": str(out), "files": files}

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
                f"{self._ws()}/repository/import",
                content=buffer.getvalue(),
                headers={"content-type": "application/gzip"},
            )
        )

    # -- observability -----------------------------------------------------------------------
    def metrics(self, *, model: str | None = None, scrape: bool = False) -> list[dict[str, Any]]:
        """The latest raw Triton samples (cumulative counters) of the workspace's models."""
        if scrape:
            self.scrape()
        params = {"model": model} if model else None
        return list(self._call("GET", f"{self._ws()}/metrics", params=params))

    def scrape(self) -> dict[str, int]:
        """Scrape Triton and the gateway now (owner): ``{"samples", "points"}`` stored."""
        return dict(self._call("POST", f"{API}/metrics/scrape"))

    def pipeline_metrics(
        self,
        pipeline: str,
        *,
        since: str = "15m",
        variant: str | int | None = None,
        source: Literal["direct", "prometheus"] = "direct",
    ) -> dict[str, Any]:
        """A pipeline's figures per variant: ``variants[i]["gateway"|"triton"][figure]`` is
        ``{"latest", "mean", "min", "max", "total", ...}`` over ``since`` (30s, 15m, 2h, 7d)."""
        from manager.observe.durations import parse_duration

        check_name(pipeline, kind="pipeline")
        parse_duration(since, what="since")
        params: dict[str, Any] = {"since": since, "source": source}
        if variant is not None:
            params["variant"] = str(variant)
        return dict(self._call("GET", f"{self._ws()}/pipelines/{pipeline}/metrics", params=params))

    def audit(
        self,
        *,
        workspace: str | None = None,
        action: str | None = None,
        principal: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("workspace", workspace), ("action", action), ("principal", principal)):
            if value:
                params[key] = value
        return list(self._call("GET", f"{API}/audit", params=params)["items"])

    def events(self, *, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The system's own events (restarts, failures, repairs), newest first (owner)."""
        params: dict[str, Any] = {"limit": limit}
        if kind:
            params["kind"] = kind
        return list(self._call("GET", f"{API}/events", params=params)["items"])

    def reconcile(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Bring repository, Triton and gateway back to what the store says is live (owner).

        Returns ``{"dry_run", "actions": [{"kind", "target", "reason"}], "errors": [{"target",
        "error"}], "in_sync"}``; with ``dry_run`` the actions are listed, not taken.
        """
        params = {"dry_run": "true" if dry_run else "false"}
        return dict(self._call("POST", f"{API}/system/reconcile", params=params))

    # -- data plane (through the gateway, KServe v2 JSON) ----------------------------------
    def _gateway(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        # the gateway serves every workspace: say which one the pipeline is in
        headers = {"lastmile-workspace": self.workspace, **kwargs.pop("headers", {})}
        try:
            response = httpx.request(method, f"{self.gateway_url}{path}", headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise GatewayError(
                f"the gateway at {self.gateway_url} is not reachable: {exc}",
                hint="lastmile status shows where it runs",
            ) from exc
        _raise_for_problem(response)
        return response

    def metadata(self, pipeline: str) -> dict[str, Any]:
        check_name(pipeline, kind="pipeline")
        return dict(self._gateway("GET", f"/v2/models/{pipeline}", timeout=30).json())

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
        response = self._gateway(
            "POST", f"/v2/models/{pipeline}/infer", json={"inputs": tensors}, timeout=60
        )
        result = {}
        for out in response.json()["outputs"]:
            dtype = NUMPY_DTYPES.get(out["datatype"], np.float64)
            result[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
        return result
