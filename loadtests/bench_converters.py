"""PyTorch eager vs onnxruntime on this CPU, side by side in one run.

    python loadtests/bench_converters.py [--threads N] [--seconds 3] [--json]

Both models go through the product's own path (``converters.api.convert``: dynamo exporter,
checker, parity), then the eager module and the ONNX file answer the same inputs in
alternating rounds, so drift in the machine's speed hits both alike:

- a small MLP (64 -> 128 -> 128 -> 10, ReLU; tabular-sized) at batch 1 and 256, and for
  context a wider one (256 -> 512 -> 512 -> 10), where matrix products start to dominate the
  per-call framework overhead that onnxruntime saves;
- ResNet-18 (torchvision's architecture, written out here so torchvision is not needed;
  random weights, 3x224x224) at batch 1 and 8.

Fairness: torch and onnxruntime get the same intra-op thread count (``--threads``, default
all cores), onnxruntime one inter-op thread, torch ``inference_mode`` (no autograd
bookkeeping). Targets (the issue "Converters"): onnxruntime >= 3x eager for the MLP at batch 1,
>= 1.2x for ResNet-18.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from converters.api import convert  # noqa: E402
from converters.benchmark import measure, ort_session  # noqa: E402

TARGETS = {"mlp": 3.0, "resnet18": 1.2}
SETTLE_S = 0.3
MLP_DIMS = {"mlp": (64, 128, 128, 10), "mlp-wide": (256, 512, 512, 10)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """torchvision.models.resnet18's layers and shapes (BasicBlock x [2, 2, 2, 2])."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def mlp(dims: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(dims):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def side_by_side(
    model: nn.Module, session: Any, x: np.ndarray, *, seconds: float, rounds: int = 6
) -> dict[str, float]:
    """Median seconds per call of eager and onnxruntime, measured in alternating rounds.

    The 2-core development VM's speed drifts over seconds (shared host); short alternating
    rounds expose both runtimes to the same drift. Both runtimes' worker threads spin for a
    while after a call (OpenMP in torch, onnxruntime's pool), which on 2 cores slows whoever
    runs next, so each round starts after a pause of ``SETTLE_S``.
    """
    tensor = torch.from_numpy(x)
    feed = {session.get_inputs()[0].name: x}
    names = [o.name for o in session.get_outputs()]
    eager: list[float] = []
    ort: list[float] = []

    def run_eager() -> object:
        with torch.inference_mode():
            return model(tensor)

    for _ in range(rounds):
        eager += measure(run_eager, seconds=seconds / rounds)
        time.sleep(SETTLE_S)
        ort += measure(lambda: session.run(names, feed), seconds=seconds / rounds)
        time.sleep(SETTLE_S)
    return {
        "eager_ms": statistics.median(eager) * 1e3,
        "ort_ms": statistics.median(ort) * 1e3,
        "eager_runs": len(eager),
        "ort_runs": len(ort),
    }


def bench_model(
    name: str,
    model: nn.Module,
    shape: tuple[int, ...],
    batches: list[int],
    *,
    threads: int,
    seconds: float,
    work: Path,
) -> list[dict[str, Any]]:
    model.eval()
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((2, *shape)).astype(np.float32)
    started = time.perf_counter()
    report = convert(
        model,
        framework="pytorch",
        out_dir=work / name,
        sample_input={"input": sample},
        rtol=1e-3,
        atol=1e-4,
        max_bytes=1 << 30,
        benchmark_seconds=0.2,
    )
    convert_s = time.perf_counter() - started
    session = ort_session(report.onnx_path, threads=threads)
    rows = []
    for batch in batches:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
        timing = side_by_side(model, session, x, seconds=seconds)
        speedup = timing["eager_ms"] / timing["ort_ms"]
        rows.append(
            {
                "model": name,
                "batch": batch,
                **timing,
                "speedup": speedup,
                "eager_per_s": batch / timing["eager_ms"] * 1e3,
                "ort_per_s": batch / timing["ort_ms"] * 1e3,
                "target": TARGETS.get(name) if batch == 1 else None,
                "parity_max_abs_err": max(o.max_abs_err for o in report.parity.outputs),
                "convert_s": convert_s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=3.0, help="per model and batch")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-converters-") as tmp:
        work = Path(tmp)
        rows = []
        for name, dims in MLP_DIMS.items():
            rows += bench_model(
                name,
                mlp(dims),
                dims[:1],
                [1, 256],
                threads=args.threads,
                seconds=args.seconds,
                work=work,
            )
        rows += bench_model(
            "resnet18",
            ResNet18(),
            (3, 224, 224),
            [1, 8],
            threads=args.threads,
            seconds=args.seconds,
            work=work,
        )
    load = (load_before, os.getloadavg()[0])
    if args.json:
        summary = {"threads": args.threads, "torch": torch.__version__, "load": load}
        print(json.dumps({**summary, "rows": rows}))
        return 0
    import onnxruntime

    print(
        f"torch {torch.__version__} eager (inference_mode) vs onnxruntime "
        f"{onnxruntime.__version__} CPU; intra-op threads {args.threads} for both"
    )
    print(
        f"{'model':9s} {'batch':>5s} {'eager ms':>9s} {'ort ms':>9s} {'speedup':>8s} "
        f"{'eager/s':>9s} {'ort/s':>9s}  target"
    )
    met = True
    for row in rows:
        verdict = ""
        if row["target"]:
            ok = row["speedup"] >= row["target"]
            met &= ok
            verdict = f">= {row['target']:.1f}x {'met' if ok else 'NOT met'}"
        print(
            f"{row['model']:9s} {row['batch']:5d} {row['eager_ms']:9.3f} {row['ort_ms']:9.3f} "
            f"{row['speedup']:7.2f}x {row['eager_per_s']:9.0f} {row['ort_per_s']:9.0f}  {verdict}"
        )
    for name in (*MLP_DIMS, "resnet18"):
        first = next(r for r in rows if r["model"] == name)
        print(
            f"{name}: converted in {first['convert_s']:.1f} s, parity max abs error "
            f"{first['parity_max_abs_err']:.2e}"
        )
    print(
        f"load average {load[0]:.2f} before, {load[1]:.2f} after on {os.cpu_count()} cores"
        + (" (other work was running: figures are noisy)" if max(load) > 0.5 else "")
    )
    print("all targets met" if met else "some targets not met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
