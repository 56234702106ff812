"""Start, watch and stop a Triton server: the embedded one from the ``nvidia-pytriton`` wheel,
or an external one (an NGC container on a GPU box) reached by URL.

The wheel ships ``tritonserver`` 2.51, its shared libraries and Python-backend stubs per
Python version; the server is assembled in a work dir exactly as DESIGN §3 measured it:
backends folder with the stub for the running interpreter, ``LD_LIBRARY_PATH`` on the wheel's
libs, explicit model control, loopback addresses only.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import logging
import os
import secrets
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from manager.errors import RuntimeSetupError, TritonUnavailable
from manager.procs import terminate_group
from manager.triton.client import TritonClient
from manager.triton.cpus import pinned
from rollout.admission import format_address, parse_address

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonEndpoints:
    http_url: str
    grpc_url: str
    metrics_url: str

    def to_dict(self) -> dict[str, str]:
        return {"http": self.http_url, "grpc": self.grpc_url, "metrics": self.metrics_url}


class TritonRuntime(Protocol):
    """What the control plane needs from a Triton server, embedded or external."""

    endpoints: TritonEndpoints
    shares_repository: bool

    @property
    def control_headers(self) -> dict[str, str]:
        """Headers that open Triton's restricted APIs (repository, ...) to the manager."""
        ...

    def start(self) -> None: ...

    def stop(self, timeout_s: float = 20.0) -> None: ...

    def client(self, timeout_s: float = 30.0) -> TritonClient: ...

    def exit_code(self) -> int | None: ...


# Triton's own APIs that only the manager may call: with ``--http-restricted-api`` and
# ``--grpc-restricted-protocol`` they need this header with the per-start secret. Inference,
# health, metadata, model config and statistics stay open (the gateway proxies them).
RESTRICTED_APIS = "model-repository,shared-memory,logging,trace"
CONTROL_HEADER = "lastmile-control"
STUB = "triton_python_backend_stub"


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_wheel() -> Path:
    """Folder ``pytriton/tritonserver`` of the installed nvidia-pytriton wheel."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeSetupError(
            "the embedded tritonserver is not installed",
            hint="pip install nvidia-pytriton==0.7.0 (make install does it), "
            "or set LASTMILE_TRITON_URL to an external Triton",
        )
    server = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (server / "bin" / "tritonserver").exists():
        raise RuntimeSetupError(f"{server}/bin/tritonserver is missing; reinstall nvidia-pytriton")
    return server


def check_libpython() -> None:
    """The Python-backend stub links the system ``libpython3.X.so``; say how to get it."""
    tag = _python_tag()
    name = f"python{tag}"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    candidates = [
        Path(libdir) / f"lib{name}.so.1.0",
        Path(f"/usr/lib/x86_64-linux-gnu/lib{name}.so.1.0"),
        Path(f"/usr/lib/aarch64-linux-gnu/lib{name}.so.1.0"),
    ]
    if ctypes.util.find_library(name) or any(p.exists() for p in candidates):
        return
    raise RuntimeSetupError(
        f"the system library lib{name}.so.1.0 is missing; Triton's Python backend needs it",
        hint=f"install it: apt-get install -y libpython{tag} (Debian/Ubuntu)",
    )


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to processes started here (its driver's control
    device, as the container runtime mounts it, or ``nvidia-smi`` on the PATH)."""
    return Path("/dev/nvidiactl").exists() or shutil.which("nvidia-smi") is not None


class EmbeddedTriton:
    """A ``tritonserver`` child process on loopback, explicit model control."""

    shares_repository = True

    def __init__(
        self,
        *,
        repository: Path,
        work_dir: Path,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        log_path: Path,
        start_timeout_s: float = 60.0,
        host: str = "127.0.0.1",
        response_cache_bytes: int = 64 * 1024 * 1024,
        stub_memory_bytes: int = 0,
        restrict_apis: bool = True,
        gpu_metrics: bool | None = None,
        cpus: frozenset[int] | None = None,
    ) -> None:
        self.response_cache_bytes = response_cache_bytes
        self.cpus = cpus  # None: every CPU
        self.gpu_metrics = gpu_visible() if gpu_metrics is None else gpu_metrics
        self.stub_memory_bytes = stub_memory_bytes
        self.restrict_apis = restrict_apis
        self.control_secret = secrets.token_urlsafe(32)
        self.repository = repository.resolve()
        self.work_dir = work_dir.resolve()
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.host = host
        self.ports = (http_port, grpc_port, metrics_port)
        self.endpoints = TritonEndpoints(
            http_url=f"http://{host}:{http_port}",
            grpc_url=f"{host}:{grpc_port}",
            metrics_url=f"http://{host}:{metrics_port}",
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.on_spawn: Callable[[int], None] | None = None  # told the pid before it is ready

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def control_headers(self) -> dict[str, str]:
        return {CONTROL_HEADER: self.control_secret} if self.restrict_apis else {}

    def exit_code(self) -> int | None:
        """None while the server runs (or was never started); its exit status once dead."""
        return self._proc.poll() if self._proc else None

    def _prepare(self) -> tuple[Path, dict[str, str]]:
        server = find_wheel()
        check_libpython()
        stub = server.parent / "tritonserver" / "python_backend_stubs" / _python_tag()
        stub_bin = stub / STUB
        if not stub_bin.exists():
            raise RuntimeSetupError(
                f"nvidia-pytriton has no Python-backend stub for Python {_python_tag()}",
                hint="use Python 3.8-3.13",
            )
        backends = self.work_dir / "backends"
        python_backend = backends / "python"
        python_backend.mkdir(parents=True, exist_ok=True)
        for item in (server / "backends" / "python").iterdir():
            if item.is_file():
                _install(item, python_backend / item.name)
        # Triton starts the stub by this exact name; a wrapper caps its address space so one
        # request cannot take the machine (the allocation fails, the model answers an error).
        _install(stub_bin, python_backend / f"{STUB}.bin")
        _install_text(python_backend / STUB, _stub_wrapper(self.stub_memory_bytes))
        env = dict(os.environ)
        libs = server.parent.parent / "nvidia_pytriton.libs"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (str(libs), env.get("LD_LIBRARY_PATH", "")) if p
        )
        # Models run in the stub with the system libpython: give them this venv's packages.
        purelib = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (purelib, env.get("PYTHONPATH", "")) if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # keep version folders as we wrote them
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        return server, env

    def start(self) -> None:
        if self._proc and self._proc.poll() is None:
            return
        server, env = self._prepare()
        self.repository.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        http_port, grpc_port, metrics_port = self.ports
        cmd = [
            str(server / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.work_dir / 'backends'}",
            "--model-control-mode=explicit",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            "--allow-metrics=true",
            # Triton reads GPU figures through DCGM (nv_gpu_utilization, memory, power, energy
            # per gpu_uuid: seen on an H200 with this very binary); without a GPU, DCGM only
            # logs start-up errors, so it is asked for where a GPU is visible.
            f"--allow-gpu-metrics={'true' if self.gpu_metrics else 'false'}",
            "--strict-readiness=false",
            # Every config we load is complete. With auto-complete on, the Python backend starts
            # one more stub per model load just to ask model.py for a config (it imports
            # numpy and onnxruntime, then exits): measured 1.6-2.7 s per load instead of
            # 0.3-0.6 s, and twice the CPU, taken from the models that serve meanwhile.
            "--disable-auto-complete-config",
            "--exit-timeout-secs=10",
            f"--cache-directory={server / 'caches'}",
            f"--cache-config=local,size={self.response_cache_bytes}",
            "--log-verbose=0",
        ]
        if self.restrict_apis:
            rule = f"{RESTRICTED_APIS}:{CONTROL_HEADER}={self.control_secret}"
            cmd += [f"--http-restricted-api={rule}", f"--grpc-restricted-protocol={rule}"]
        if self.cpus is not None:  # the server and every stub it starts inherit the set
            cmd = pinned(cmd, self.cpus)
        log.info("starting tritonserver on %s (log %s)", self.endpoints.http_url, self.log_path)
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,
            )
        if self.on_spawn is not None:
            self.on_spawn(self._proc.pid)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        with TritonClient(self.endpoints.http_url, timeout_s=2.0) as client:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    tail = self._log_tail()
                    self._proc = None
                    raise TritonUnavailable(
                        f"tritonserver exited during start-up; last log lines:\n{tail}",
                        hint=f"full log: {self.log_path}; a port may be taken "
                        "(set LASTMILE_TRITON_HTTP_PORT and friends)",
                    )
                if client.is_live():
                    if self._proc is not None and self.restrict_apis:
                        _scrub_argument(self._proc.pid, self.control_secret)
                    return
                time.sleep(0.2)
        self.stop()
        raise TritonUnavailable(
            f"tritonserver did not come up within {self.start_timeout_s:.0f} s",
            hint=f"see {self.log_path}",
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the server and every process of its group: its stubs outlive a server that
        died, and must not keep memory, ports or the stub binary busy."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # The group is the server's pid (own session); it holds the stubs even after the
        # server itself died. Those stubs serve nobody: no grace period for them.
        dead = proc.poll() is not None
        log.info("stopping tritonserver (pid %d%s)", proc.pid, ", already dead" if dead else "")
        terminate_group(proc.pid, timeout_s=0.0 if dead else timeout_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def client(self, timeout_s: float = 30.0) -> TritonClient:
        # loads over gRPC: an HTTP load holds one of Triton's HTTP threads, and the gateway's
        # connections on it, for the whole load (TritonClient.load_model)
        return TritonClient(
            self.endpoints.http_url,
            metrics_url=self.endpoints.metrics_url,
            timeout_s=timeout_s,
            control_headers=self.control_headers,
            grpc_url=self.endpoints.grpc_url,
        )

    def __enter__(self) -> EmbeddedTriton:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _install(src: Path, dest: Path) -> None:
    """Copy next to ``dest`` and rename over it: a running stub keeps its old inode (copying
    over a binary in use fails with 'Text file busy')."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o700 if os.access(src, os.X_OK) else 0o600)
    os.replace(tmp, dest)


def _install_text(dest: Path, text: str) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o700)
    os.replace(tmp, dest)


def _stub_wrapper(memory_bytes: int) -> str:
    limit = f"ulimit -v {max(memory_bytes // 1024, 1)}\n" if memory_bytes > 0 else ""
    return f'#!/bin/sh\n{limit}exec "$(dirname "$0")/{STUB}.bin" "$@"\n'


def _scrub_argument(pid: int, secret: str) -> None:
    """Overwrite the restricted-API secret in the server's argument vector once it has parsed
    its options, so that ``ps`` and ``/proc/PID/cmdline`` no longer show it to other users.
    Best effort: where the kernel refuses (no ptrace access), the secret stays visible to
    processes that may read this process's command line."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        arg_start, arg_end = int(fields[45]), int(fields[46])
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as mem:
            mem.seek(arg_start)
            args = mem.read(arg_end - arg_start)
            needle = secret.encode()
            offset = args.find(needle)
            while offset >= 0:
                mem.seek(arg_start + offset)
                mem.write(b"x" * len(needle))
                offset = args.find(needle, offset + len(needle))
    except (OSError, IndexError, ValueError) as exc:
        log.warning("could not hide the restricted-API secret from ps: %s", exc)


class ExternalTriton:
    """A Triton we do not own (NGC container, cluster service): models are pushed through the
    load API with config and file overrides, since it shares no disk with us."""

    shares_repository = False

    def __init__(
        self,
        url: str,
        *,
        grpc_url: str | None = None,
        metrics_url: str | None = None,
        start_timeout_s: float = 60.0,
        control_headers: dict[str, str] | None = None,
        control_over_grpc: bool = False,
    ):
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if not parsed.hostname or not parsed.port:
            raise RuntimeSetupError(
                f"invalid LASTMILE_TRITON_URL {url!r}", hint="use http://HOST:PORT"
            )
        default_grpc = f"{parsed.hostname}:{parsed.port + 1}"
        self.endpoints = TritonEndpoints(
            http_url=f"http://{parsed.hostname}:{parsed.port}",
            grpc_url=_grpc_address(grpc_url) if grpc_url else default_grpc,
            metrics_url=metrics_url or f"http://{parsed.hostname}:{parsed.port + 2}",
        )
        self.start_timeout_s = start_timeout_s
        self.pid: int | None = None
        self.control_headers = dict(control_headers or {})
        # loads over gRPC (TRITON_CONTROL_PROTOCOL=grpc): see TritonClient
        self.control_over_grpc = control_over_grpc

    def exit_code(self) -> int | None:
        """Not our process: health checks alone tell whether it is up."""
        return None

    def start(self) -> None:
        with self.client(timeout_s=5.0) as client:
            client.wait_ready(self.start_timeout_s)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Nothing to stop: the external server's lifecycle is not ours."""

    def client(self, timeout_s: float = 30.0) -> TritonClient:
        return TritonClient(
            self.endpoints.http_url,
            metrics_url=self.endpoints.metrics_url,
            timeout_s=timeout_s,
            control_headers=self.control_headers,
            grpc_url=self.endpoints.grpc_url if self.control_over_grpc else None,
        )


def _grpc_address(text: str) -> str:
    """HOST:PORT of a gRPC server (a grpc:// prefix is accepted); RuntimeSetupError if not."""
    try:
        host, port = parse_address(text.removeprefix("grpc://"))
    except ValueError:
        raise RuntimeSetupError(
            f"invalid LASTMILE_TRITON_GRPC_URL entry {text!r}", hint="use HOST:PORT"
        ) from None
    return format_address(host, port)
