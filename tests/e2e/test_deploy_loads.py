"""A deploy loads each changed model exactly once, over Triton's gRPC repository API.

Loads are counted as Triton does them: one Python-backend stub process per model instance it
starts (Triton's log also says "loading" for a served version it only keeps under a changed
version policy). A thread samples /proc while the deploy runs; a stub lives for seconds, far
longer than the sampling interval. That an HTTP load would hold up HTTP inference on Triton
for the whole load, and a gRPC one does not, is measured in ``loadtests/bench_swaps.py``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from loadtests._models import free_ports, write_scale_model
from manager.errors import TritonError, TritonUnavailable
from manager.triton.client import TritonClient
from manager.triton.runtime import STUB, EmbeddedTriton
from tests.e2e.conftest import RunningSystem
from tests.onnx_models import make_affine

pytestmark = pytest.mark.e2e


def _stubs(repository: Path) -> dict[int, str]:
    """pid -> "<model>/<version>" of the stubs serving models of ``repository``."""
    root = str(repository.resolve()) + "/"
    out: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 2 or not Path(argv[0].decode(errors="replace")).name.startswith(STUB):
            continue
        model_py = argv[1].decode(errors="replace")  # <repository>/<model>/<version>/model.py
        if model_py.startswith(root):
            out[int(entry.name)] = "/".join(Path(model_py).parts[-3:-1])
    return out


@contextmanager
def _started_stubs(repository: Path) -> Iterator[Counter[str]]:
    """Counts, per "<model>/<version>", the stubs that start inside the block."""
    started: Counter[str] = Counter()
    seen = set(_stubs(repository))
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            for pid, model in _stubs(repository).items():
                if pid not in seen:
                    seen.add(pid)
                    started[model] += 1

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield started
    finally:
        time.sleep(0.2)  # a stub that started as the block ended
        stop.set()
        thread.join(timeout=10)


@contextmanager
def _triton_loads(system: RunningSystem) -> Iterator[Counter[str]]:
    """Counts the model loads Triton reports in its log inside the block (one line per model
    version it made ready)."""
    log_path = system.settings.logs_dir / "tritonserver.log"
    start = log_path.stat().st_size
    loads: Counter[str] = Counter()
    yield loads
    with open(log_path, "rb") as log:
        log.seek(start)
        for line in log.read().decode(errors="replace").splitlines():
            found = re.search(r"successfully loaded '([^']+)'", line)
            if found:
                loads[found.group(1)] += 1


def test_a_deploy_starts_one_stub_for_the_changed_model_and_none_for_what_serves(
    system: RunningSystem, tmp_path: Path
) -> None:
    repository = system.settings.repository_dir
    for version, scale in ((1, 1.0), (2, 2.0)):
        path = make_affine(tmp_path / f"c{version}.onnx", 4, scale, 0.0)
        system.cli("model", "import", str(path), "--name", "counted")
    system.cli("pipeline", "create", "kept", "--step", "counted:1")  # keeps version 1 serving
    system.cli("pipeline", "create", "moved", "--step", "counted:1")
    system.cli("pipeline", "create", "moved", "--step", "counted:2")
    system.cli("deploy", "kept", "--version", "1")
    system.cli("deploy", "moved", "--version", "1")
    serving = {pid for pid, model in _stubs(repository).items() if model == "default.counted/1"}
    assert len(serving) == 1

    with _started_stubs(repository) as started, _triton_loads(system) as loads:
        system.cli("deploy", "moved", "--version", "2")
    assert dict(started) == {"default.counted/2": 1}
    # the changed model and the new ensemble are loaded once each. (Triton 2.51 itself reloads
    # the ensembles that serve from a model whenever any model it depends on is loaded or
    # unloaded: a re-validation in microseconds that starts no stub, as many times as it likes.)
    assert loads["default.counted"] == 1 and loads["default.moved.v2"] == 1, loads
    assert set(loads) == {
        "default.counted",
        "default.moved.v2",
        "default.kept.v1",
        "default.moved.v1",
    }
    # version 1 went on serving in the stub it had (not restarted by the new version policy)
    assert serving <= set(_stubs(repository))
    # nothing was written into a published version folder while it loaded
    assert not [p for p in repository.rglob("*.pyc")]

    # blue/green: green's private copy of the step's model, once; blue's model untouched
    with _started_stubs(repository) as started:
        system.cli("rollout", "start", "moved", "--strategy", "blue-green", "--candidate", "1")
    assert dict(started) == {"default.moved.v1.counted/1": 1}
    system.cli("rollout", "abort", "moved")


def _ready(system: RunningSystem, model: str) -> bool:
    with TritonClient(system.state["triton"][0]["http"], timeout_s=10) as client:
        return client.is_model_ready(model)


def test_a_promoted_green_copy_retires_the_shared_model_blue_used(
    system: RunningSystem, tmp_path: Path
) -> None:
    repository = system.settings.repository_dir
    for version, scale in ((1, 1.0), (2, 2.0)):
        path = make_affine(tmp_path / f"a{version}.onnx", 4, scale, 0.0)
        system.cli("model", "import", str(path), "--name", "alone")
        system.cli("pipeline", "create", "lone", "--step", f"alone:{version}")
    system.cli("deploy", "lone", "--version", "1")
    system.cli("rollout", "start", "lone", "--strategy", "blue-green", "--candidate", "2")
    system.cli("rollout", "switch", "lone")
    with _started_stubs(repository) as started:
        system.cli("rollout", "promote", "lone")
    assert not started  # promoting loads nothing
    assert _ready(system, "default.lone.v2.alone")
    # blue's model served nothing else: unloaded once drained, and gone from the repository
    assert not _ready(system, "default.alone")
    assert not (repository / "default.alone").exists()


@pytest.fixture
def triton(tmp_path: Path) -> Iterator[EmbeddedTriton]:
    """An embedded Triton, repository API restricted, with one Python model not yet loaded."""
    from loadtests._models import embedded_triton

    server = embedded_triton(tmp_path, *free_ports(3))
    write_scale_model(server.repository, "scaled")
    with server:
        yield server


def test_the_embedded_server_is_loaded_over_grpc_with_its_control_header(
    triton: EmbeddedTriton,
) -> None:
    with triton.client(60) as client:
        assert client.grpc_url == triton.endpoints.grpc_url
        client.load_model("scaled")
        assert client.is_model_ready("scaled")
        with pytest.raises(TritonError, match="could not load model 'missing'"):
            client.load_model("missing")
    # without the header, Triton's restricted gRPC protocol refuses the load
    stranger = TritonClient(triton.endpoints.http_url, grpc_url=triton.endpoints.grpc_url)
    with stranger, pytest.raises(TritonError, match="could not load model 'scaled'") as refused:
        stranger.load_model("scaled")
    assert not isinstance(refused.value, TritonUnavailable)


def test_a_load_over_grpc_to_a_closed_port_is_unavailable(triton: EmbeddedTriton) -> None:
    [closed] = free_ports(1)
    client = TritonClient(
        triton.endpoints.http_url,
        grpc_url=f"127.0.0.1:{closed}",
        control_headers=triton.control_headers,
        timeout_s=5,
    )
    with client, pytest.raises(TritonUnavailable):
        client.load_model("scaled")
