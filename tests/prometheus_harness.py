"""A real Prometheus (Debian's ``prometheus``, which ``.ci/run`` and ``make`` install) on a free
port with its own storage, for the tests that compare its figures with Lastmile's own."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def prometheus_binary() -> str:
    """Path of the prometheus binary; skipped where it is not installed (a failure on CI,
    where .ci/run installs it)."""
    found = shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin:/usr/sbin")
    if found:
        return found
    if os.environ.get("CI"):
        raise AssertionError("prometheus is not installed: .ci/run installs Debian's prometheus")
    pytest.skip("Debian's prometheus is not installed (apt-get install prometheus; make does)")


def promtool_binary() -> str:
    """Path of promtool (in Debian's prometheus package), as ``prometheus_binary``."""
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin:/usr/sbin")
    if found:
        return found
    if os.environ.get("CI"):
        raise AssertionError("promtool is not installed: .ci/run installs Debian's prometheus")
    pytest.skip("Debian's prometheus (promtool) is not installed (apt-get install prometheus)")


def wait_for(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``check`` until it holds (AssertionError past ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None


@contextmanager
def running_prometheus(config: Path, work: Path, port: int) -> Iterator[str]:
    """Prometheus with ``config`` on 127.0.0.1:``port``; its URL once it is ready."""
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "prometheus.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {log_path.read_text()[-2000:]}")
            r = _get(f"{url}/-/ready")
            return r is not None and r.status_code == 200

        wait_for("prometheus ready", ready, 30)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def targets_up(url: str) -> dict[str, str]:
    """Each active target's ``lastmile_component`` label -> its health."""
    r = _get(f"{url}/api/v1/targets")
    if r is None or r.status_code != 200:
        return {}
    return {
        t["labels"].get("lastmile_component", ""): t["health"]
        for t in r.json()["data"]["activeTargets"]
    }
