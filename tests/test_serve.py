"""adcore serve: answers equal predict_image's, errors, the bounded queue (503), load, graceful SIGTERM."""

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")

import tiny_detectors
from adcore.engine import Engine
from adcore.frames import to_rgb_image
from adcore.image_prediction import ImagePrediction
from adcore.plugins import PluginRegistry, set_registry
from adcore.run import fit_run
from adcore.serve.app import create_app
from adcore.serve.models import load_models
from helpers import anomalous_image, make_mvtec, normal_image, save_png

LOAD_REQUESTS = int(os.environ.get("ADCORE_SERVE_LOAD_REQUESTS", "2000"))


class Server:
    """uvicorn in a thread on a free loopback port."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def request(port, method, path, body=None, headers=None, connection=None):
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    if own:
        connection.close()
    return response.status, json.loads(data), dict(response.getheaders())


def post_json(port, fields, connection=None):
    return request(port, "POST", "/predict", json.dumps(fields), {"Content-Type": "application/json"}, connection)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A fitted TinyMean checkpoint, loaded for serving, and test images (one not square)."""
    root = make_mvtec(tmp_path_factory.mktemp("serve") / "category")
    run = tmp_path_factory.mktemp("serve-run") / "tiny"
    engine = Engine(device="cpu", progress=False, log=lambda message: None)
    fit_run(tiny_detectors.TinyMean(), f"mvtec:{root}", run, engine, heatmaps=0, say=lambda message: None)
    registry = PluginRegistry()
    registry.add_plugin(tiny_detectors.plugin, name="tiny-test-plugin", version="0.0.1")
    set_registry(registry)
    try:
        models = load_models([str(run / "model.safetensors")])
    finally:
        set_registry(None)
    folder = tmp_path_factory.mktemp("serve-images")
    defect = anomalous_image(5, size=96)[0]
    images = [
        save_png(folder / "normal.png", normal_image(300)),
        save_png(folder / "defect.png", defect),
        save_png(folder / "wide.png", np.concatenate([defect, normal_image(301, 96)], axis=1)),
    ]
    return models, images


@pytest.fixture(scope="module")
def server(served):
    models, images = served
    running = Server(create_app(models, workers=2, max_queue=64, allow_paths=[str(images[0].parent)]))
    yield running
    running.stop()


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _expected(models, path, **options):
    return next(iter(models.values())).predict(to_rgb_image(path), **options).to_json()


def test_repeated_names_are_numbered(served):
    models, _ = served
    path = next(iter(models.values())).path
    registry = PluginRegistry()
    registry.add_plugin(tiny_detectors.plugin, name="tiny-test-plugin", version="0.0.1")
    set_registry(registry)
    try:
        assert list(load_models([str(path), str(path)])) == ["tiny", "tiny-2"]
    finally:
        set_registry(None)


def test_health_and_models(server, served):
    status, body, _ = request(server.port, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["models"] == ["tiny"]
    assert body["queue"]["workers"] == 2 and body["queue"]["max_queue"] == 64
    status, body, _ = request(server.port, "GET", "/models")
    (model,) = body["models"]
    assert model["detector"] == "tiny-mean" and model["kind"] == "checkpoint" and model["input_size"] == [64, 64]
    assert model["image_threshold"] is not None and body["default"] == "tiny"


def test_answers_equal_predict_image_for_json_and_raw_bytes(server, served):
    models, images = served
    for path in images:
        expected = _expected(models, path)
        status, body, _ = post_json(server.port, {"image": _b64(path)})
        assert status == 200, body
        for key in ("score", "normalized_score", "is_anomalous", "width", "height", "regions", "map"):
            assert body[key] == json.loads(json.dumps(expected[key])), key
        assert body["model"] == "tiny" and body["seconds"] > 0
        status, raw, _ = request(
            server.port, "POST", "/predict?model=tiny", path.read_bytes(), {"Content-Type": "image/png"}
        )
        assert status == 200 and raw["score"] == body["score"] and raw["regions"] == body["regions"]
    status, body, _ = post_json(server.port, {"image": _b64(images[1])})
    assert body["is_anomalous"] is True and body["regions"]
    status, body, _ = post_json(server.port, {"image": _b64(images[0])})
    assert body["is_anomalous"] is False


def test_full_map_tiles_and_allowed_paths(server, served):
    models, images = served
    wide = images[2]
    status, body, _ = post_json(server.port, {"image": _b64(wide), "include_map": True})
    assert status == 200 and np.asarray(body["map"]["values"]).shape == (96, 192)
    status, tiled, _ = post_json(server.port, {"image": _b64(wide), "tile": 96, "tile_stride": 48})
    assert status == 200 and tiled["tiles"] == 3
    assert tiled["score"] == pytest.approx(_expected(models, wide, tile=96, tile_stride=48)["score"])
    status, whole, _ = post_json(server.port, {"image": _b64(wide), "tile": 500})
    assert whole["tiles"] == 1 and whole["score"] == body["score"]
    status, by_path, _ = post_json(server.port, {"path": str(wide)})
    assert status == 200 and by_path["score"] == body["score"]


@pytest.mark.parametrize(
    "fields, status, message",
    [
        ({"image": "not base64!"}, 400, "not valid base64"),
        ({"image": base64.b64encode(b"hello").decode()}, 400, "not an image"),
        ({"nothing": 1}, 400, "needs 'image'"),
        ({"image": "", "model": "other"}, 404, "unknown model 'other'"),
        ({"path": "/etc/passwd"}, 403, "outside the folders"),
        ({"image": "AAAA", "tile": 0}, 400, "tile must be positive"),
    ],
)
def test_bad_requests_get_clear_errors(server, fields, status, message):
    got, body, _ = post_json(server.port, fields)
    assert got == status and message in body["error"]


def test_bad_tiling_upload_and_size_limits(served, server):
    models, images = served
    got, body, _ = post_json(server.port, {"image": _b64(images[0]), "tile": 32, "tile_stride": 64})
    assert got == 400 and "exceeds the tile size" in body["error"]
    got, body, _ = post_json(server.port, {"image": _b64(images[0]), "tile": 1})
    assert got == 400 and "at most 1024" in body["error"]
    got, body, _ = request(server.port, "POST", "/predict", b"{", {"Content-Type": "application/json"})
    assert got == 400 and "not valid JSON" in body["error"]
    small = Server(create_app(models, max_image_bytes=1000))
    try:
        got, body, _ = request(small.port, "POST", "/predict", images[1].read_bytes(), {"Content-Type": "image/png"})
        assert got == 413 and "exceeds" in body["error"]
        got, body, _ = post_json(small.port, {"path": str(images[1])})
        assert got == 403 and "disabled" in body["error"]
    finally:
        small.stop()


class SlowModel:
    """Takes ``seconds`` per image (a model much slower than its clients)."""

    kind = "test"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.name = "slow"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind}

    def predict(self, image, tile=None, tile_stride=None) -> ImagePrediction:
        time.sleep(self.seconds)
        return ImagePrediction(1.0, None, None, None, None, None, [], *image.size)


def test_a_full_queue_answers_503_at_once(served):
    _, images = served
    server = Server(create_app({"slow": SlowModel(1.5)}, workers=1, max_queue=1))
    payload = json.dumps({"image": _b64(images[0])})
    try:
        results = []

        def send():
            started = time.perf_counter()
            status, body, headers = request(
                server.port, "POST", "/predict", payload, {"Content-Type": "application/json"}
            )
            results.append((status, body, headers, time.perf_counter() - started))

        first = threading.Thread(target=send)
        first.start()
        time.sleep(0.3)  # the first is running
        second = threading.Thread(target=send)
        second.start()
        time.sleep(0.3)  # the second waits in the queue
        send()  # the third finds the queue full
        rejected = results[-1]
        assert rejected[0] == 503 and "queue full" in rejected[1]["error"] and rejected[2]["retry-after"] == "1"
        assert rejected[3] < 1.0  # answered at once, not after the queue drained
        first.join()
        second.join()
        assert sorted(r[0] for r in results) == [200, 200, 503]
        _, health, _ = request(server.port, "GET", "/health")
        assert health["queue"]["rejected"] == 1 and health["queue"]["served"] == 2
        assert health["queue"]["running"] == 0 and health["queue"]["waiting"] == 0
    finally:
        server.stop()


def test_load_no_dropped_or_wrong_answers(served, capsys):
    """LOAD_REQUESTS requests from 8 keep-alive clients; every answer is the image's own score."""
    models, images = served
    server = Server(create_app(models, workers=2, max_queue=64))
    payloads = [json.dumps({"image": _b64(p)}) for p in images]
    expected = [_expected(models, p)["score"] for p in images]
    clients = 8
    per_client = LOAD_REQUESTS // clients

    def client(index):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        latencies, wrong = [], 0
        for i in range(per_client):
            which = (index + i) % len(images)
            started = time.perf_counter()
            status, body, _ = post_json(server.port, json.loads(payloads[which]), connection)
            latencies.append(time.perf_counter() - started)
            wrong += status != 200 or body["score"] != expected[which]
        connection.close()
        return latencies, wrong

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(client, range(clients)))
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    latencies = np.sort(np.concatenate([o[0] for o in outcomes]))
    assert len(latencies) == per_client * clients and sum(o[1] for o in outcomes) == 0
    with capsys.disabled():
        print(
            f"\nserve load: {len(latencies)} requests, {clients} clients: p50 {np.percentile(latencies, 50) * 1000:.1f} ms, "
            f"p99 {np.percentile(latencies, 99) * 1000:.1f} ms, {len(latencies) / seconds:.0f} requests/s "
            f"(load average {os.getloadavg()[0]:.2f})"
        )


SERVER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from adcore.serve.app import create_app, run_server
    from adcore.image_prediction import ImagePrediction

    class Slow:
        kind = "test"
        name = "slow"
        def describe(self):
            return {"name": "slow"}
        def predict(self, image, tile=None, tile_stride=None):
            time.sleep(2.0)
            return ImagePrediction(42.0, None, None, None, None, None, [], *image.size)

    run_server(create_app({"slow": Slow()}), "127.0.0.1", int(sys.argv[1]), graceful_timeout=20, log_level="warning")
    print("exited cleanly", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_sigterm_finishes_the_request_in_flight(served, tmp_path):
    _, images = served
    script = tmp_path / "slow_server.py"
    script.write_text(SERVER_SCRIPT)
    port = _free_port()
    process = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
                time.sleep(0.1)
        result = {}
        sender = threading.Thread(target=lambda: result.update(answer=post_json(port, {"image": _b64(images[0])})))
        sender.start()
        time.sleep(0.5)  # the request is being scored
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no new connections once shutting down
            request(port, "GET", "/health")
        sender.join(30)
        status, body, _ = result["answer"]
        assert status == 200 and body["score"] == 42.0  # the request in flight completed
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert b"exited cleanly" in out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_exported_onnx_is_served_beside_its_checkpoint(served, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("adcore_runtime")
    from adcore.export import export_detector

    models, images = served
    checkpoint = next(iter(models.values()))
    exported = export_detector(checkpoint.detector, "onnx", tmp_path / "tiny-onnx.onnx", check=False)
    both = {**models, **load_models(exported=[str(exported.path)])}
    assert list(both) == ["tiny", "tiny-onnx"]
    server = Server(create_app(both))
    try:
        status, body, _ = request(server.port, "GET", "/models")
        kinds = {m["name"]: m["kind"] for m in body["models"]}
        name = next(n for n, kind in kinds.items() if kind == "exported")
        for path in images:
            _, torch_answer, _ = post_json(server.port, {"image": _b64(path), "model": "tiny"})
            status, onnx_answer, _ = post_json(server.port, {"image": _b64(path), "model": name})
            assert status == 200
            assert onnx_answer["score"] == pytest.approx(torch_answer["score"], rel=1e-5, abs=1e-5)
            assert onnx_answer["is_anomalous"] == torch_answer["is_anomalous"]
            assert (onnx_answer["width"], onnx_answer["height"]) == (torch_answer["width"], torch_answer["height"])
            assert len(onnx_answer["regions"]) == len(torch_answer["regions"])
        status, body, _ = post_json(server.port, {"image": _b64(images[0]), "model": name, "tile": 32})
        assert status == 400 and "tiling is served for checkpoints only" in body["error"]
    finally:
        server.stop()


def test_serve_command_needs_a_model(capsys):
    from adcore.cli import main

    assert main(["serve"]) == 2
    assert "at least one --checkpoint FILE or --exported FILE" in capsys.readouterr().err
