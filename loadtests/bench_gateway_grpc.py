"""gRPC gateway overhead alone: `bench_gateway.py --protocols grpc` (kept for old commands).

    python loadtests/bench_gateway_grpc.py [--seconds 3] [--rounds 5] [--driver raw|tritonclient]
                                           [--json] [any other bench_gateway.py option]

`make bench` runs loadtests/bench_gateway.py, which measures gRPC (direct Triton vs the gateway
vs nginx `grpc_pass`, 1 and 16 clients) next to HTTP; this entry point runs those cells only.
The drivers live in loadtests/_bench_grpc.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from loadtests.bench_gateway import main as bench_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    args = ["--grpc-driver" if a == "--driver" else a for a in args]
    args = [a.replace("--driver=", "--grpc-driver=", 1) for a in args]
    return bench_main(["--protocols", "grpc", *args])


if __name__ == "__main__":
    sys.exit(main())
