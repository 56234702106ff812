"""One settings object for the whole control plane.

Built once in an entry point (CLI, supervisor, test) and passed down; nothing reads the
environment at import time. Every field can be set as ``LASTMILE_<FIELD>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
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
    bind_host: str = Field(default="127.0.0.1", description="Address the gateway and API bind.")
    gateway_http_port: int = Field(default=8000, description="Gateway KServe v2 HTTP port.")
    gateway_grpc_port: int = Field(default=8001, description="Gateway KServe v2 gRPC port.")
    gateway_metrics_port: int = Field(default=8002, description="Gateway Prometheus metrics port.")
    gateway_admin_port: int = Field(
        default=8003, description="Loopback-only port where the control plane pushes routes."
    )
    api_port: int = Field(default=8080, description="Management API port.")
    triton_url: str | None = Field(
        default=None,
        description="Use an external Triton (e.g. an NGC container) at this HTTP URL instead of "
        "starting the embedded tritonserver. Example: http://10.0.0.5:8000",
    )
    triton_metrics_url: str | None = Field(
        default=None,
        description="Metrics URL of the external Triton; default: its host on port 8002.",
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
    template_dir: Path | None = Field(
        default=None,
        description="Folder of your own ModelConfig presets (*.pbtxt); they win over the "
        "built-in ones of the same name.",
    )
    max_batch_size: int = Field(
        default=64, description="max_batch_size given to models with a dynamic batch dimension."
    )
    scrape_interval_s: float = Field(
        default=5.0, description="Seconds between two scrapes of Triton's /metrics."
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, description="Largest model file accepted by an import."
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
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def models_dir(self) -> Path:
        """Where imported model files are kept (content-addressed)."""
        return self.home / "models"

    @property
    def api_url(self) -> str:
        return f"http://{self.bind_host}:{self.api_port}"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.repository_dir, self.logs_dir, self.run_dir, self.models_dir):
            path.mkdir(parents=True, exist_ok=True)
