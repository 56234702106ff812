"""The offline kit: loadtests/pack_kit.py trims what the other machine's Python cannot use, and
loadtests/kit_run.sh unpacks a kit into an environment of its own and runs a command in it
with the kit's packages ahead of the machine's. The packing's download step needs an index and
minutes; it is left to a real run (loadtests/README.md gives its figures). Here the kit is a
small one made by the test: one package, packed the way pack_kit.py packs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import pack_kit

REPO_ROOT = Path(__file__).resolve().parents[2]
KIT_RUN = REPO_ROOT / "loadtests" / "kit_run.sh"
TAG = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def touch(path: Path, size: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


def test_trim_keeps_only_what_the_target_python_uses(tmp_path: Path) -> None:
    site = tmp_path / "site"
    stubs = site / "pytriton" / "tritonserver" / "python_backend_stubs"
    for version in ("3.8", "3.11", "3.12", "3.13"):
        touch(stubs / version / "triton_python_backend_stub", 100)
    libs = site / "nvidia_pytriton.libs"
    touch(libs / "libpython3-419a3a08.13.so.1.0", 1000)
    touch(libs / "libpython3-0badc0de.12.so.1.0", 1000)
    touch(libs / "libtritonserver-717102f0.so", 1000)
    touch(site / "numpy" / "core" / "tests" / "test_a.py", 50)
    touch(site / "numpy" / "core" / "multiarray.py", 50)
    touch(site / "other" / "__pycache__" / "m.cpython-312.pyc", 5)

    removed = pack_kit.trim(site, "3.12")

    assert removed == 3 * 100 + 1000 + 50 + 5
    assert sorted(p.name for p in stubs.iterdir()) == ["3.12"]
    assert sorted(p.name for p in libs.iterdir()) == [
        "libpython3-0badc0de.12.so.1.0",
        "libtritonserver-717102f0.so",
    ]
    assert (site / "numpy" / "core" / "multiarray.py").exists()
    assert not (site / "numpy" / "core" / "tests").exists()
    assert not (site / "other" / "__pycache__").exists()


def test_names_and_versions_are_read_as_pip_reads_them() -> None:
    assert pack_kit.normalize("Typing_Extensions") == "typing-extensions"
    assert pack_kit.wheel_name(Path("prometheus_client-0.21.0-py3-none-any.whl")) == (
        "prometheus-client"
    )
    assert pack_kit.python_tag("3.12") == "cp312"
    with pytest.raises(argparse.ArgumentTypeError, match=r"a version like 3\.12, not '312'"):
        pack_kit.python_tag("312")


def test_a_bad_python_version_is_refused_before_anything_is_fetched(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        pack_kit.main(["--python", "python3"])
    assert exit_.value.code == 2
    assert "--python takes a version like 3.12, not 'python3'" in capsys.readouterr().err


def _kit(tmp_path: Path) -> Path:
    """A kit for this Python holding one package, `kitted`, packed as pack_kit.pack packs."""
    site = tmp_path / "site"
    (site / "kitted").mkdir(parents=True)
    (site / "kitted" / "__init__.py").write_text("WHERE = 'kit'\n")
    kit = tmp_path / "kit"
    kit.mkdir()
    pack_kit.pack(site, kit / f"site-{TAG}.tar.xz")
    return kit


def _kit_run(kit: Path, env_dir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KIT_PYTHON=sys.executable, KIT_ENV=str(env_dir))
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        ["bash", str(KIT_RUN), str(kit), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_kit_run_runs_the_command_with_the_kit_ahead_of_the_machines_packages(
    tmp_path: Path,
) -> None:
    kit = _kit(tmp_path)
    env_dir = tmp_path / "env"
    probe = (
        "import sys, kitted, httptools, rollout; "
        "print(sys.executable); print(kitted.WHERE); "
        "print(sys.path.index(kitted.__path__[0].rsplit('/', 1)[0]) "
        "< sys.path.index(httptools.__path__[0].rsplit('/', 1)[0]))"
    )
    run = _kit_run(kit, env_dir, "python", "-c", probe)
    assert run.returncode == 0, run.stderr
    executable, where, kit_first = run.stdout.split()
    assert Path(executable).parent == env_dir / "bin"
    assert (where, kit_first) == ("kit", "True")  # the machine's packages come after the kit's
    assert "kit unpacked into" in run.stderr
    again = _kit_run(kit, env_dir, "python", "-c", "import kitted")  # reused, not unpacked again
    assert again.returncode == 0 and "kit unpacked" not in again.stderr, again.stderr


def test_kit_run_says_which_kit_this_machine_needs(tmp_path: Path) -> None:
    kit = tmp_path / "kit"
    kit.mkdir()
    run = _kit_run(kit, tmp_path / "env", "python", "-c", "pass")
    assert run.returncode == 2
    minor = sys.version_info[1]
    assert f"site-{TAG}.tar.xz is missing: this machine's" in run.stderr
    assert f"python loadtests/pack_kit.py --python 3.{minor}" in run.stderr
    run = _kit_run(kit, tmp_path / "env")  # no command
    assert run.returncode == 2 and "usage:" in run.stderr
