"""``lastmile demo``: the whole story on a laptop, end to end, with real components.

Two small ONNX models are built in code (a feature scaler and a softmax classifier), imported,
chained into a pipeline, deployed on the embedded tritonserver, and queried through the
gateway with the official ``tritonclient`` (JSON and binary tensors) like a user's service
would; the answers are checked against onnxruntime, and the pipeline's figures (rates and
latencies by the names users know, from the gateway and Triton) are shown.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

from manager import supervisor
from manager.errors import LastmileError
from manager.sdk import Lastmile
from manager.settings import Settings

N_FEATURES = 4
N_CLASSES = 3


def make_scaler(path: Path, mean: np.ndarray, scale: np.ndarray) -> None:
    """y = (x - mean) * scale, batch dimension dynamic."""
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["x", "mean"], ["centered"]),
            helper.make_node("Mul", ["centered", "scale"], ["scaled"]),
        ],
        "scaler",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", N_FEATURES])],
        initializer=[
            numpy_helper.from_array(mean.astype(np.float32), "mean"),
            numpy_helper.from_array(scale.astype(np.float32), "scale"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def make_classifier(path: Path, weights: np.ndarray, bias: np.ndarray) -> None:
    """probabilities = softmax(features @ W + b)."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", N_CLASSES])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def reference(scaler: Path, classifier: Path, x: np.ndarray) -> np.ndarray:
    """The same pipeline run by hand with onnxruntime, to check the served answers."""
    import onnxruntime as ort

    scaled = ort.InferenceSession(str(scaler)).run(None, {"x": x})[0]
    return np.asarray(ort.InferenceSession(str(classifier)).run(None, {"features": scaled})[0])


def _infer_official_client(gateway_http: str, x: np.ndarray, binary: bool) -> np.ndarray:
    # The demo plays the user's service here: the official client, unchanged, at the gateway.
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(gateway_http.removeprefix("http://"))
    try:
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("fraud", [inp], outputs=[out])
        return np.asarray(result.as_numpy("probabilities"))
    finally:
        client.close()


def run_demo(settings: Settings, console: Console) -> int:
    rng = np.random.default_rng(7)
    work = Path(tempfile.mkdtemp(prefix="lastmile-demo-"))
    scaler, classifier = work / "scaler.onnx", work / "classifier.onnx"
    make_scaler(scaler, rng.normal(size=N_FEATURES), rng.uniform(0.5, 2, size=N_FEATURES))
    make_classifier(
        classifier, rng.normal(size=(N_FEATURES, N_CLASSES)), rng.normal(size=N_CLASSES)
    )
    console.rule("[bold]Lastmile demo")
    console.print(f"1. built two ONNX models in {work}")
    started = False
    try:
        t0 = time.monotonic()
        with console.status("2. starting tritonserver, gateway, scraper and API…"):
            state = supervisor.start_detached(settings)
        started = True
        console.print(
            f"2. up in {time.monotonic() - t0:.1f} s: gateway {state['gateway']['http']}, "
            f"Triton {state['triton'][0]['http']}, API {state['api']['url']}"
        )
        key_path = settings.owner_key_path
        console.print(f"   the server owner's API key is in {key_path} (mode 0600)")
        with Lastmile(
            state["api"]["url"],
            api_key=key_path.read_text().strip(),
            gateway_url=state["gateway"]["http"],
        ) as lm:
            for path, name in ((scaler, "scaler"), (classifier, "classifier")):
                info = lm.import_model(path, name=name)
                console.print(f"3. imported {name} as version {info['version']}")
            pipe = lm.create_pipeline("fraud", steps=["scaler", "classifier"])
            console.print(f"4. pipeline fraud v{pipe['version']}: scaler → classifier")
            with console.status("5. deploying (repository, ensemble, load on Triton)…"):
                dep = lm.deploy("fraud", version=pipe["version"])
            console.print(f"5. deployed as Triton ensemble {dep['ensemble']} ({dep['state']})")

            x = rng.normal(size=(5, N_FEATURES)).astype(np.float32)
            expected = reference(scaler, classifier, x)
            ok = True
            for binary in (False, True):
                got = _infer_official_client(state["gateway"]["http"], x, binary)
                close = got.shape == expected.shape and np.allclose(got, expected, atol=1e-5)
                ok &= close
                kind = "binary tensors" if binary else "JSON"
                verdict = "[green]matches[/green]" if close else "[red]DIFFERS from[/red]"
                console.print(f"6. tritonclient via gateway ({kind}): {verdict} onnxruntime")
            for _ in range(20):
                _infer_official_client(state["gateway"]["http"], x, True)
            table = Table(title="answers (first 3 rows): class probabilities")
            table.add_column("row")
            for c in range(N_CLASSES):
                table.add_column(f"class {c}")
            for i, row in enumerate(got[:3]):
                table.add_row(str(i), *(f"{p:.4f}" for p in row))
            console.print(table)

            lm.scrape()
            (variant,) = lm.pipeline_metrics("fraud", since="15m")["variants"]
            metrics = Table(
                title="7. fraud's figures since the start (lastmile metrics fraud: the gateway's "
                "and Triton's, scraped into the SQL store)"
            )
            for col in ("source", "figure", "latest interval", "over the run"):
                metrics.add_column(col)
            for source, names in (
                ("gateway", ("gateway_requests_per_s", "gateway_latency_p50_ms",
                             "gateway_latency_p99_ms")),
                ("triton", ("requests_per_s", "request_ms_avg", "queue_ms_avg",
                            "compute_ms_avg", "batch_size_avg")),
            ):  # fmt: skip
                for name in names:
                    figure = variant.get(source, {}).get(name)
                    if figure is None:
                        continue
                    total = figure.get("total")
                    overall = (
                        f"{total:g} requests" if total is not None else f"{figure['mean']:.3g}"
                    )
                    metrics.add_row(source, name, f"{figure['latest']:.3g}", overall)
            console.print(metrics)
            served = variant.get("triton", {}).get("requests_per_s", {}).get("total") or 0
            if served < 22:
                console.print(f"[red]expected ≥ 22 successful requests, the figures say {served}")
                ok = False
    except LastmileError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        ok = False
    finally:
        if started:
            with console.status("8. shutting down…"):
                supervisor.stop(settings)
            console.print("8. stopped tritonserver, gateway and API")
    console.rule("[green]demo passed" if ok else "[red]demo failed")
    return 0 if ok else 1
