"""One settings object for the whole control plane.

Built once in an entry point (CLI, supervisor, test) and passed down; nothing reads the
environment at import time. Every field can be set as ``LASTMILE_<FIELD>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LASTMILE_", extra="ignore")

    home: Path = Field(
        default=Path(".lastmile"),
        description="Folder holding the SQLite database, the model repository, state and logs.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the store; default: SQLite file in `home`. "
        "Example: postgresql+psycopg://user@127.0.0.1:5432/lastmile",
    )
    profile: Literal["cpu", "gpu"] = Field(
        default="cpu",
        description="Repository profile: `cpu` runs ONNX through onnxruntime inside a generated "
        "Python-backend model (embedded tritonserver); `gpu` emits backend onnxruntime models "
        "for NGC Triton containers.",
    )
    api_bind_host: str = Field(
        default="127.0.0.1",
        description="Address the management API binds. Separate from the gateway's: exposing "
        "the gateway to clients never exposes the API.",
    )
    gateway_bind_host: str = Field(
        default="127.0.0.1", description="Address the gateway (KServe v2 HTTP, gRPC) binds."
    )
    api_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names the API answers to (Host header), besides localhost, "
        "127.0.0.1, [::1] and LASTMILE_API_BIND_HOST; anything else is refused (no DNS "
        'rebinding). JSON list, e.g. ["lastmile.internal"].',
    )
    api_allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call mutating routes (e.g. a web console at "
        '["https://console.example"]); requests from any other Origin are refused.',
    )
    api_header_timeout_s: float = Field(
        default=10.0, description="Seconds a client has to send a request's headers."
    )
    allow_pickle_uploads: bool = Field(
        default=False,
        description="Let workspace admins upload pickled models (trust_pickle) over the API. "
        "Unpickling runs the file's code on the server: leave off unless you trust every admin.",
    )
    gateway_http_port: int = Field(default=8000, description="Gateway KServe v2 HTTP port.")
    gateway_grpc_port: int = Field(default=8001, description="Gateway KServe v2 gRPC port.")
    gateway_metrics_port: int = Field(default=8002, description="Gateway Prometheus metrics port.")
    gateway_admin_port: int = Field(
        default=8003, description="Loopback-only port where the control plane pushes routes."
    )
    gateway_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Gateway processes serving the data ports on the same listening sockets "
        "(one event loop, so at most one CPU core, each). The first answers the admin and "
        "metrics ports for all; raise it when the gateway's core is saturated (large binary "
        "bodies, thousands of requests a second).",
    )
    gateway_pull_token: SecretStr | None = Field(
        default=None,
        description="Token that gateways the control plane cannot push to (replicas on a "
        "cluster, started with --routes-url) send to GET /api/v1/gateway/routes as 'Bearer "
        "TOKEN'. Unset: that route refuses every caller.",
    )
    gateway_metrics_urls: str | None = Field(
        default=None,
        description="Metrics endpoints of gateways this system does not run (replicas on a "
        "cluster), comma-separated; {A..B} stands for A to B, and dns+http://NAME:PORT/PATH "
        "for every address NAME resolves to (a headless Service's pods). Their per-variant "
        "figures are added to this system's gateway's: canary gates, drains, rollout "
        "reports and lastmile metrics count the traffic of every gateway.",
    )
    api_port: int = Field(default=8080, description="Management API port.")
    triton_url: str | None = Field(
        default=None,
        description="Use external Triton servers (e.g. NGC containers) at these HTTP URLs, "
        "comma-separated, instead of starting embedded tritonservers: one pool, every model "
        "loaded on each. Example: http://10.0.0.5:8000,http://10.0.0.6:8000",
    )
    triton_replicas: int = Field(
        default=1,
        ge=1,
        le=16,
        description="How many embedded tritonservers to run as one pool (`lastmile up "
        "--replicas N`): every model is loaded on each and the gateway balances between them. "
        "Replica i (from 0) listens on the TRITON_*_PORT settings plus i x "
        "TRITON_PORT_STRIDE.",
    )
    triton_cpus: str | None = Field(
        default=None,
        description="CPUs of each embedded tritonserver, one set per replica separated by ';' "
        "(e.g. `0-3;4-7`), or `auto` (the usable CPUs split by whole physical cores): the "
        "server and its model processes run only there (taskset), so servers that serve "
        "different variants (a rollout's --candidate-servers) do not take each other's cores. "
        "Default: every CPU.",
    )
    triton_port_stride: int = Field(
        default=10, ge=3, description="Port offset between embedded Triton replicas."
    )
    triton_metrics_url: str | None = Field(
        default=None,
        description="Metrics URL of the external Triton (one server only); default: each "
        "server's host on its HTTP port + 2.",
    )
    triton_control_header: SecretStr | None = Field(
        default=None,
        description="For an external Triton started with --http-restricted-api: the header "
        "its repository API requires, as NAME=VALUE (the embedded server gets a fresh secret "
        "at every start).",
    )
    triton_grpc_url: str | None = Field(
        default=None,
        description="gRPC addresses (HOST:PORT) of the external Triton servers, comma-separated "
        "in the order of TRITON_URL; default: each server's host on its HTTP port + 1. The "
        "gateway sends gRPC inference there, and the manager loads models there when "
        "TRITON_CONTROL_PROTOCOL is grpc.",
    )
    triton_control_protocol: Literal["http", "grpc"] = Field(
        default="http",
        description="How the manager loads models on external Triton servers. grpc: Triton "
        "runs a gRPC load on a thread of its own, while an HTTP load holds the HTTP worker "
        "thread that received it and every inference connection that thread serves (a stall "
        "during swaps); with TRITON_CONTROL_HEADER the server must restrict gRPC the same way "
        "(--grpc-restricted-protocol=model-repository:NAME=VALUE). Embedded servers always "
        "load over gRPC.",
    )
    shadow_diff_rate: float = Field(
        default=100.0,
        gt=0,
        description="Shadow rollouts: answer pairs the gateway decodes and compares per second "
        "and candidate (a token bucket; the others count for the latency figures only). "
        "Comparing costs ~120 µs of gateway CPU per small pair.",
    )
    triton_http_port: int = Field(default=8100, description="Embedded tritonserver HTTP port.")
    triton_grpc_port: int = Field(default=8101, description="Embedded tritonserver gRPC port.")
    triton_metrics_port: int = Field(
        default=8102, description="Embedded tritonserver metrics port."
    )
    triton_response_cache_bytes: int = Field(
        default=64 * 1024 * 1024,
        description="Size of the embedded tritonserver's response cache (models opt in).",
    )
    triton_start_timeout_s: float = Field(
        default=60.0, description="Seconds to wait for the embedded tritonserver to become ready."
    )
    triton_load_timeout_s: float = Field(
        default=120.0, description="Seconds to wait for one model load on Triton."
    )
    triton_request_timeout_s: float = Field(
        default=30.0, description="Timeout of each control call to Triton."
    )
    triton_gpu_metrics: bool | None = Field(
        default=None,
        description="Whether embedded tritonservers report GPU figures (utilisation, memory, "
        "power, energy per GPU, through DCGM). Unset: on where a GPU is visible "
        "(/dev/nvidiactl or nvidia-smi).",
    )
    triton_stub_memory_bytes: int = Field(
        default=8 * 1024**3,
        ge=0,
        description="Address-space limit of each Python-backend stub the embedded tritonserver "
        "starts (RLIMIT_AS): a request that needs more fails alone and the server lives. "
        "0: no limit.",
    )
    supervise_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two health checks of the processes `lastmile up` runs "
        "(Triton, its Python-backend stubs, the gateway).",
    )
    health_failures_before_restart: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed health checks after which a running but wedged "
        "process is killed and restarted (a dead one is restarted at once).",
    )
    restart_backoff_max_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait between two restarts of a process that keeps failing "
        "(the wait doubles from 1 s).",
    )
    reconcile_interval_s: float = Field(
        default=60.0,
        ge=0,
        description="Seconds between two reconciliations of store, repository, Triton and "
        "gateway (also run at start and after every restart). 0: only then.",
    )
    warmup_requests: int = Field(
        default=3,
        ge=0,
        le=1000,
        description="Requests of zeros sent straight to a freshly loaded pipeline version "
        "before the gateway routes clients to it (0: none).",
    )
    drain_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="Longest wait for requests in flight to a version the gateway no longer "
        "routes to, before that version is unloaded.",
    )
    rollout_tick_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between two evaluations of running canaries' gates.",
    )
    template_dir: Path | None = Field(
        default=None,
        description="Folder of your own ModelConfig presets (*.pbtxt); they win over the "
        "built-in ones of the same name.",
    )
    max_batch_size: int = Field(
        default=64, description="max_batch_size given to models with a dynamic batch dimension."
    )
    max_tensor_bytes: int = Field(
        default=1024**3,
        gt=0,
        description="Largest output or intermediate tensor a model may produce at its maximum "
        "batch size (shape inference at import and deploy); refuses graphs one request could "
        "use to exhaust memory.",
    )
    scrape_interval_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between two scrapes of Triton's and the gateway's /metrics (also "
        "the scrape interval `lastmile prometheus-config` writes).",
    )
    metrics_samples_retention_s: float = Field(
        default=3600.0,
        ge=0,
        description="Seconds to keep raw Triton samples (cumulative counters as read, shown by "
        "`lastmile metrics --model`); the figures people read are kept as points. 0: do not "
        "store raw samples.",
    )
    metrics_full_resolution_s: float = Field(
        default=86400.0,
        gt=0,
        description="Seconds metric points are kept as measured (one per scrape); older ones "
        "are averaged into 5-minute points.",
    )
    metrics_five_minute_s: float = Field(
        default=7 * 86400.0,
        gt=0,
        description="Age in seconds after which 5-minute metric points are averaged into "
        "hourly ones.",
    )
    metrics_retention_s: float = Field(
        default=90 * 86400.0,
        gt=0,
        description="Seconds metric points are kept at all (hourly averages by then).",
    )
    prometheus_url: str | None = Field(
        default=None,
        description="A Prometheus that scrapes this system (see `lastmile prometheus-config`), "
        "e.g. http://127.0.0.1:9090. When set, the figures are also read from it with PromQL "
        "and stored with source 'prometheus' (`lastmile metrics PIPELINE --source prometheus`).",
    )
    prometheus_step_s: int = Field(
        default=15,
        ge=1,
        le=3600,
        description="Seconds per figure read from Prometheus: each is a rate() over that window, "
        "so it must hold at least two of Prometheus' scrapes.",
    )
    capture_window_s: int = Field(
        default=60,
        ge=1,
        le=86400,
        description="Width in seconds of the windows captured traffic is summarised into.",
    )
    capture_interval_s: float = Field(
        default=5.0, gt=0, description="Seconds between two passes of the capture summariser."
    )
    capture_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Bytes of captured raw traffic the gateway's spool may hold on disk before "
        "it drops (and counts) new captures.",
    )
    capture_keep_raw_s: float = Field(
        default=0.0,
        ge=0,
        description="Seconds to keep summarised raw capture segments (in capture/raw/) for "
        "inspection; 0 deletes them once summarised.",
    )
    assay_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between two passes of the assay scheduler (due windows judged, "
        "pending alert webhooks delivered).",
    )
    assay_delay_s: float = Field(
        default=15.0,
        ge=0,
        description="Seconds a window's end must be past before the scheduler judges it: "
        "captured calls reach the store through the gateway's spool (segments closed every "
        "2 s) and the summariser (LASTMILE_CAPTURE_INTERVAL_S).",
    )
    capture_retention_days: float = Field(
        default=30.0, gt=0, description="Days of capture summaries kept in the store."
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Largest request body accepted by an upload (checked while streaming).",
    )
    max_archive_bytes: int = Field(
        default=2 * 1024 * 1024 * 1024,
        gt=0,
        description="Largest total size a repository archive may extract to.",
    )
    max_archive_members: int = Field(
        default=10_000, gt=0, description="Most files and folders a repository archive may hold."
    )
    api_url: str | None = Field(
        default=None,
        description="For the CLI and SDK: the management API to talk to. Default: the one "
        "`lastmile up` runs for LASTMILE_HOME (its state file).",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="For the CLI and SDK: the API key to send. Default: the key stored by "
        "`lastmile login`, else LASTMILE_HOME/admin.key when it is readable.",
    )
    workspace: str = Field(
        default="default", description="For the CLI and SDK: the workspace to work in."
    )
    credentials_file: Path | None = Field(
        default=None,
        description="Where `lastmile login` keeps API keys (mode 0600). Default: "
        "$XDG_CONFIG_HOME/lastmile/credentials.json (~/.config/...).",
    )
    start_timeout_s: float = Field(
        default=120.0, description="Seconds `lastmile up --detach` waits for the system to be up."
    )

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'lastmile.db').resolve()}"

    @property
    def repository_dir(self) -> Path:
        return self.home / "repository"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def capture_dir(self) -> Path:
        """The gateway's data-capture spool (raw segments the summariser consumes)."""
        return self.home / "capture"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def models_dir(self) -> Path:
        """Where imported model files are kept (content-addressed)."""
        return self.home / "models"

    @property
    def local_api_url(self) -> str:
        """Where this machine reaches the API that ``lastmile up`` serves."""
        return f"http://{_url_host(self.api_bind_host)}:{self.api_port}"

    @property
    def gateway_host(self) -> str:
        """Where a local client reaches the gateway (a wildcard bind is reached on loopback)."""
        return _url_host(self.gateway_bind_host)

    @property
    def owner_key_path(self) -> Path:
        return self.home / "admin.key"

    @property
    def credentials_path(self) -> Path:
        if self.credentials_file is not None:
            return self.credentials_file
        import os

        base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        return Path(base) / "lastmile" / "credentials.json"

    def ensure_dirs(self) -> None:
        """Make the home's folders, readable by this user only (0700): it holds the store,
        models, keys and logs."""
        for path in (self.home, self.repository_dir, self.logs_dir, self.run_dir, self.models_dir):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.chmod(0o700)


def _url_host(bind: str) -> str:
    if bind in ("0.0.0.0", ""):
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind
