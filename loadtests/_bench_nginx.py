"""Debian's nginx as a plain reverse proxy in front of Triton: the yardstick for the gateway.

Runs as the current user, in the foreground, from a generated config in a scratch folder (pid,
logs and temp paths inside it): HTTP with keep-alive upstream connections, gRPC with
``grpc_pass``. The buffers are sized so that a 256 KiB tensor neither in a request nor in an
answer goes through a temp file (nginx's defaults would spill both to disk), and keep-alive
limits are lifted so that neither side reconnects every 1000 requests; nothing else is tuned.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from manager.triton.cpus import pinned

CONFIG = """\
{user}worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    upstream triton_http {{
        server 127.0.0.1:{triton_http};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    upstream triton_grpc {{
        server 127.0.0.1:{triton_grpc};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{http_port};
        location / {{
            proxy_pass http://triton_http;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
            proxy_busy_buffers_size 128k;
        }}
    }}
    server {{
        listen 127.0.0.1:{grpc_port} http2;
        location / {{
            grpc_pass grpc://triton_grpc;
            grpc_buffer_size 64k;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """Path of the nginx binary (PATH, then /usr/sbin where Debian puts it), None if absent."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def render_config(
    work: Path, *, triton_http: int, triton_grpc: int, http_port: int, grpc_port: int, workers: str
) -> str:
    """nginx.conf for `work`; as root, the workers stay root too (they read `work`)."""
    user = ""
    if os.geteuid() == 0:
        user = f"user {pwd.getpwuid(0).pw_name};\n"
    return CONFIG.format(
        user=user,
        workers=workers,
        dir=work,
        triton_http=triton_http,
        triton_grpc=triton_grpc,
        http_port=http_port,
        grpc_port=grpc_port,
    )


class Nginx:
    """One nginx master (and its workers) in the foreground; `pid` is the master's."""

    def __init__(self, work: Path, ports: tuple[int, int], upstream: tuple[int, int]) -> None:
        self.work = work
        self.http_port, self.grpc_port = ports
        self.upstream_http, self.upstream_grpc = upstream
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(
        self, workers: str = "1", timeout_s: float = 10.0, cpus: frozenset[int] | None = None
    ) -> None:
        """Start (on `cpus`, its workers too, when given) and wait until both listeners
        accept; RuntimeError saying why otherwise."""
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (make bench-deps: apt-get install nginx)")
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "nginx.conf").write_text(
            render_config(
                self.work,
                triton_http=self.upstream_http,
                triton_grpc=self.upstream_grpc,
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                workers=workers,
            )
        )
        log = (self.work / "stderr.log").open("wb")
        cmd = [binary, "-p", str(self.work), "-c", "nginx.conf", "-e", str(self.work / "error.log")]
        cmd += ["-g", "daemon off;"]
        if cpus is not None:
            cmd = pinned(cmd, cpus)
        with log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited ({self.proc.returncode}): {self.why()}")
            if "[emerg]" in self.why():  # e.g. a port taken: nginx retries bind() for 2.5 s
                self.stop(timeout_s=1.0)
                raise RuntimeError(f"nginx failed: {self.why()}")
            # workers exist only once the master bound every listener
            if self.worker_count() and all(_accepts(p) for p in (self.http_port, self.grpc_port)):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not listen within {timeout_s:.0f} s: {self.why()}")

    def why(self) -> str:
        """The last lines nginx wrote (its error log, then its stderr)."""
        lines: list[str] = []
        for name in ("error.log", "stderr.log"):
            with contextlib.suppress(OSError):
                lines += (self.work / name).read_text(errors="replace").splitlines()[-5:]
        return " | ".join(lines) or "(no log)"

    def worker_count(self) -> int:
        """Workers the master runs (what `worker_processes auto` chose, for one)."""
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            return 0
        return len(children)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGQUIT (graceful), SIGKILL past `timeout_s`; the exit code, None if never started."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
