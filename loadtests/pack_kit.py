"""Pack what the benchmarks need for a machine that can fetch nothing, as one small file.

    python loadtests/pack_kit.py --python 3.12 [--present grpcio,protobuf,...] [--out kit]
        [--limit-mib 60]

and there, in a copy of the repository with the kit in it (`kit/` is git-ignored):

    loadtests/kit_run.sh kit python loadtests/bench_gateway.py --gateway-workers 4 ...

Here: the project's dependencies are downloaded as wheels for the other machine's Python
(`--python`), installed into a folder without running anything of them, trimmed of what that
Python cannot use (nvidia-pytriton's Python-backend stubs and libpython of other Python
versions, NumPy's tests), and packed with xz: `site-cpXY.tar.xz`. `--present` names the
distributions the other machine already has (they are left out; NumPy is kept whatever it
says, since the Python-backend stub needs NumPy below 2). Debian's nginx and wrk go to
`debs/` (for `bench_gateway.py`'s comparison) when apt-get can fetch them. The project itself
is not in the kit: it travels as the repository.

There, `kit_run.sh` makes a virtual environment in /tmp from that machine's python3, unpacks
the kit into it, lets the machine's own packages follow the kit's on the path, unpacks the
debs, and runs the command in it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# pip matches platform tags exactly: every manylinux level a dependency's wheel may carry
PLATFORMS = (
    "manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64",
    "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
    "manylinux_2_5_x86_64", "manylinux1_x86_64",
)  # fmt: skip
ALWAYS_PACKED = frozenset({"numpy"})  # the Python-backend stub needs NumPy < 2
DEBS = ("nginx", "wrk", "libluajit2-5.1-2")  # nginx-light only depends on nginx
LIBPYTHON = re.compile(r"libpython3-[0-9a-f]+\.(\d+)\.so")  # auditwheel's renamed libpython3.X


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(path: Path) -> str:
    return normalize(path.name.split("-")[0])


def python_tag(version: str) -> str:
    match = re.fullmatch(r"3\.(\d+)", version)
    if match is None:
        raise argparse.ArgumentTypeError(f"--python takes a version like 3.12, not {version!r}")
    return f"cp3{match.group(1)}"


def step(message: str) -> None:
    print(f"[pack_kit] {message}", file=sys.stderr, flush=True)


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args, "-q"], check=True)


def target_options(version: str) -> list[str]:
    options = ["--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    options += ["--abi", python_tag(version)]
    for platform in PLATFORMS:
        options += ["--platform", platform]
    return options


def fetch(stage: Path, version: str) -> list[Path]:
    """The project's wheel and every dependency's, for `version`, in stage/wheels."""
    wheels = stage / "wheels"
    step("building the project's wheel")
    pip("wheel", "--no-deps", "-w", str(wheels), str(REPO_ROOT))
    (project,) = wheels.glob("lastmile-*.whl")
    step(f"downloading its dependencies for Python {version}")
    pip("download", *target_options(version), "-d", str(wheels), str(project))
    return sorted(p for p in wheels.glob("*.whl") if p != project)


def install(wheels: list[Path], site: Path, version: str) -> None:
    step(f"unpacking {len(wheels)} wheels (nothing of them runs)")
    pip("install", "--no-deps", "--no-compile", "--target", str(site),
        *target_options(version), *map(str, wheels))  # fmt: skip


def trim(site: Path, version: str) -> int:
    """Remove what Python `version` cannot use; returns the bytes removed."""
    minor = version.split(".")[1]
    doomed: list[Path] = []
    stubs = site / "pytriton" / "tritonserver" / "python_backend_stubs"
    if stubs.is_dir():
        doomed += [d for d in stubs.iterdir() if d.name != version]
    libs = site / "nvidia_pytriton.libs"
    if libs.is_dir():
        for lib in libs.iterdir():
            match = LIBPYTHON.match(lib.name)
            if match and match.group(1) != minor:
                doomed.append(lib)
    doomed += [d for d in (site / "numpy").rglob("tests") if d.is_dir()]
    doomed += list(site.rglob("__pycache__"))
    removed = 0
    for path in doomed:
        if path.is_dir():
            removed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            removed += path.stat().st_size
            path.unlink()
    return removed


def pack(site: Path, archive: Path) -> None:
    step(f"packing {archive.name} with xz (a minute or two)")
    env = {"XZ_OPT": "-9 -T0", "PATH": "/usr/bin:/bin"}
    subprocess.run(["tar", "-C", str(site), "-cJf", str(archive), "."], check=True, env=env)


def fetch_debs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.deb"):
        old.unlink()
    step(f"downloading {', '.join(DEBS)} (Debian)")
    done = subprocess.run(["apt-get", "download", *DEBS], cwd=folder, capture_output=True)
    if done.returncode != 0:
        step("apt-get could not fetch them (bench_gateway.py then runs without nginx and wrk): "
             + done.stderr.decode(errors="replace").strip()[-300:])  # fmt: skip
    return done.returncode == 0


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--python", required=True, help="the other machine's Python, e.g. 3.12")
    p.add_argument("--present", default="",
                   help="distributions that machine has, comma-separated (left out)")  # fmt: skip
    p.add_argument("--out", type=Path, default=REPO_ROOT / "kit")
    p.add_argument("--limit-mib", type=float, default=60.0,
                   help="fail when the kit is larger (what can be carried)")  # fmt: skip
    a = p.parse_args(argv)
    try:
        tag = python_tag(a.python)
    except argparse.ArgumentTypeError as exc:
        p.error(str(exc))
    if shutil.which("tar") is None or shutil.which("xz") is None:
        p.error("tar and xz are needed to pack the kit (apt-get install xz-utils)")
    present = {normalize(n) for n in a.present.split(",") if n.strip()} - ALWAYS_PACKED
    began = time.monotonic()
    out: Path = a.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lastmile-kit-") as tmp:
        stage = Path(tmp)
        wheels = fetch(stage, a.python)
        kept = [w for w in wheels if wheel_name(w) not in present]
        left = sorted({wheel_name(w) for w in wheels} - {wheel_name(w) for w in kept})
        if left:
            step(f"left out as present there: {', '.join(left)}")
        site = stage / "site"
        install(kept, site, a.python)
        removed = trim(site, a.python)
        step(f"trimmed {removed / 2**20:.0f} MiB that Python {a.python} cannot use")
        archive = out / f"site-{tag}.tar.xz"
        for old in out.glob("site-*.tar.xz"):
            old.unlink()
        pack(site, archive)
        unpacked = size(site)
    fetch_debs(out / "debs")
    total = size(out)
    print(f"kit {out}: {total / 2**20:.1f} MiB ({archive.name} {size(archive) / 2**20:.1f} MiB, "
          f"{unpacked / 2**20:.0f} MiB unpacked; debs {size(out / 'debs') / 2**20:.1f} MiB) "
          f"in {time.monotonic() - began:.0f} s")  # fmt: skip
    if total > a.limit_mib * 2**20:
        print(f"the kit is larger than --limit-mib {a.limit_mib:g}: name more of what the other "
              "machine has with --present", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
