"""What the scenarios of loadtests/scenarios.py share: a system in a scratch home, the CLI as
JSON, waits on states with a deadline, and locust running loadtests/locustfile.py as a
subprocess whose answers per variant are read back while it runs.

Locust runs in its own process because it patches the standard library with gevent at import;
the runner stays an ordinary program that starts systems, calls the CLI and kills processes.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from loadtests._models import REPO_ROOT, lastmile_cli, start_system

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
TERMINAL = frozenset({"promoted", "rolled_back", "aborted"})
T = TypeVar("T")


class ScenarioError(RuntimeError):
    """A scenario could not run to its end (a command failed, a state never came)."""


_T0 = time.monotonic()


def progress(message: str) -> None:
    print(f"  [{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def poll(check: Callable[[], T | None], what: str, timeout_s: float, every_s: float = 0.2) -> T:
    """The first value of `check()` that is not None, asked every `every_s` until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise ScenarioError(f"no {what} after {timeout_s:g} s")
        time.sleep(every_s)


def epoch(timestamp: str) -> float:
    """Seconds since the epoch of an ISO timestamp as the API writes it (``…Z``)."""
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


Counts = dict[str, dict[str, int]]  # variant -> {"ok": n, "failed": n}


def window(answers: Mapping[str, Any], since: float, until: float = math.inf) -> Counts:
    """Answers per variant in the whole wall-clock seconds inside [since, until)."""
    counts: Counts = {}
    for second, per in answers.get("seconds", {}).items():
        if math.ceil(since) <= int(second) and int(second) + 1 <= until:
            for variant, c in per.items():
                into = counts.setdefault(variant, {"ok": 0, "failed": 0})
                into["ok"] += c["ok"]
                into["failed"] += c["failed"]
    return counts


def total(counts: Counts) -> int:
    return sum(c["ok"] + c["failed"] for c in counts.values())


def share(counts: Counts) -> dict[str, float]:
    """Percentage of the answers per variant."""
    n = total(counts)
    return (
        {v: round(100 * (c["ok"] + c["failed"]) / n, 1) for v, c in sorted(counts.items())}
        if n
        else {}
    )


class Load:
    """``locust -f loadtests/locustfile.py --headless`` against one gateway, in a subprocess."""

    def __init__(
        self,
        out: Path,
        name: str,
        state: Mapping[str, Any],
        pipeline: str,
        users: int,
        user_rps: float,
        extra: Sequence[str] = (),
        cap_s: float = 900,
    ) -> None:
        self.variants_file = out / f"{name}_variants.json"
        self.log_path = out / f"{name}_locust.log"
        command = [
            sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users), "-r", str(users), "-t", f"{math.ceil(cap_s)}s",
            "--csv", str(out / name), "--only-summary",
            "--host", state["gateway"]["http"], "--grpc-address", state["gateway"]["grpc"],
            "--pipeline", pipeline, "--user-rps", str(user_rps),
            "--variants-file", str(self.variants_file), *extra,
        ]  # fmt: skip
        self.variants_file.unlink(missing_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
            )
        self.started = time.time()

    def answers(self) -> dict[str, Any] | None:
        """The latest answers per variant locust wrote (None before its first write)."""
        try:
            return dict(json.loads(self.variants_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ScenarioError(f"locust exited ({self.proc.returncode}):\n{tail}")

    def wait_answers(self, n: int, since: float = 0.0, timeout_s: float = 60.0) -> float:
        """Until `n` answers came in whole seconds after `since` (epoch); the time then."""

        def enough() -> float | None:
            self._alive()
            answers = self.answers()
            return time.time() if answers and total(window(answers, since)) >= n else None

        return poll(enough, f"{n} answers from locust", timeout_s)

    def stop(self) -> dict[str, Any]:
        """Stop locust (SIGTERM: it writes its totals and CSV files) and return what it wrote
        last: the answers per variant and locust's own ``summary``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        answers = self.answers()
        if not answers or not answers.get("done"):
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise ScenarioError(f"locust wrote no final figures:\n{tail}")
        return answers


class System:
    """A running system in a scratch home (``lastmile up --detach``) and the CLI against it."""

    def __init__(self, work: Path, env: dict[str, str], state: dict[str, Any]) -> None:
        self.work = work
        self.env = env
        self.state = state
        self.loads: list[Load] = []
        self._sdk: Any = None

    @property
    def sdk(self) -> Any:
        """The SDK as the owner (the key ``lastmile up`` left in the scratch home): what the
        CLI calls, without a process start per poll."""
        if self._sdk is None:
            from manager.sdk import Lastmile

            key = (Path(self.env["LASTMILE_HOME"]) / "admin.key").read_text().strip()
            self._sdk = Lastmile(self.state["api"]["url"], api_key=key, timeout_s=30)
        return self._sdk

    def ask(self, call: Callable[..., T], *args: Any) -> T:
        """An SDK call; its errors as ScenarioError."""
        from manager.errors import LastmileError

        try:
            return call(*args)
        except LastmileError as exc:
            raise ScenarioError(f"{getattr(call, '__name__', call)}{args}: {exc}") from exc

    def status(self) -> dict[str, Any]:
        """What ``lastmile status --json`` prints."""
        return dict(self.ask(self.sdk.status))

    def cli(self, *args: str) -> str:
        progress("lastmile " + " ".join(args))
        try:
            return lastmile_cli(self.env, *args)
        except SystemExit as exc:  # lastmile_cli exits with the command's output
            raise ScenarioError(str(exc)) from None

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def pipeline(self, name: str, models: Sequence[Path], deploy: int = 1) -> None:
        """Import each file as a version of model ``<name>-model``, make pipeline version i
        of model version i, deploy version `deploy`."""
        for version, path in enumerate(models, start=1):
            self.cli("model", "import", str(path), "--name", f"{name}-model", "--force")
            self.cli("pipeline", "create", name, "--step", f"{name}-model:{version}")
        self.cli("deploy", name, "--version", str(deploy))

    def load(
        self, out: Path, name: str, pipeline: str, users: int, user_rps: float, *extra: str
    ) -> Load:
        load = Load(out, name, self.state, pipeline, users, user_rps, extra)
        self.loads.append(load)
        return load

    def rollout(self, pipeline: str) -> dict[str, Any]:
        """What ``lastmile rollout status PIPELINE --json`` prints."""
        return dict(self.ask(self.sdk.rollout, pipeline))

    def wait_rollout(
        self, pipeline: str, states: frozenset[str], timeout_s: float
    ) -> dict[str, Any]:
        """The rollout status once its state is one of `states` (or terminal: a rollout that
        ended otherwise is returned as it is, for the scenario to judge)."""

        def reached() -> dict[str, Any] | None:
            status = self.rollout(pipeline)
            return status if status["state"] in states | TERMINAL else None

        return poll(reached, f"rollout of {pipeline} in {sorted(states)}", timeout_s)


@contextmanager
def running_system(work: Path, **settings: str) -> Iterator[System]:
    """A system in ``work/home``; stops its locust runs and the system at the end."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        env, state = start_system(work / "home", **settings)
    except SystemExit as exc:
        raise ScenarioError(f"lastmile up failed: {exc}") from None
    system = System(work, env, state)
    try:
        yield system
    finally:
        if system._sdk is not None:
            system._sdk.close()
        for load in system.loads:
            if load.proc.poll() is None:
                load.proc.kill()
                load.proc.wait()
        try:
            system.cli("down")
        except ScenarioError as exc:
            progress(f"lastmile down failed: {exc}")
