"""Latency and throughput of ``adcore serve`` on loopback.

Starts ``adcore serve`` in a subprocess (or targets ``--url``), sends ``--requests`` POST
/predict requests (base64 JSON) from ``--concurrency`` keep-alive clients, cycling over the
given images, and prints p50/p90/p99 latency, throughput and the count of failed or
inconsistent answers (every answer for an image must equal the first one for it).

    python benchmarks/bench_serve.py --checkpoint runs/bottle/model.safetensors \\
        --image ../shared/datasets/mvtec_ad/bottle/test/broken_small/000.png --requests 500 --concurrency 8
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(host: str, port: int, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _wait_healthy(host: str, port: int, process: subprocess.Popen | None, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _get(host, port, "/health")
            if status == 200:
                return body
        except OSError:
            pass
        if process is not None and process.poll() is not None:
            sys.exit(f"the server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            sys.exit("the server did not become healthy")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=[])
    parser.add_argument("--exported", action="append", default=[])
    parser.add_argument("--url", help="an already running server (then no server is started)")
    parser.add_argument("--image", action="append", required=True, help="image file(s) to send; repeatable")
    parser.add_argument("--model", help="model name to ask for (default: the server's first)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--tile", type=int)
    parser.add_argument("--warmup", type=int, default=5, help="requests sent first and not measured")
    args = parser.parse_args()

    process = None
    if args.url:
        parsed = urlparse(args.url)
        host, port = parsed.hostname, parsed.port or 80
    else:
        if not args.checkpoint and not args.exported:
            parser.error("give --checkpoint/--exported to start a server, or --url")
        host, port = "127.0.0.1", _free_port()
        command = [
            sys.executable,
            "-m",
            "adcore",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            "--max-queue",
            str(args.max_queue),
        ]
        command += [f"--checkpoint={c}" for c in args.checkpoint] + [f"--exported={e}" for e in args.exported]
        process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    health = _wait_healthy(host, port, process)
    model = args.model or health["models"][0]
    bodies = []
    for path in args.image:
        with open(path, "rb") as handle:
            fields = {"image": base64.b64encode(handle.read()).decode(), "model": model}
        if args.tile:
            fields["tile"] = args.tile
        bodies.append(json.dumps(fields))

    reference: dict[int, float] = {}
    lock = threading.Lock()

    def send(connection: http.client.HTTPConnection, which: int) -> tuple[int, dict]:
        connection.request("POST", "/predict", bodies[which], {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    warm = http.client.HTTPConnection(host, port, timeout=300)
    for i in range(max(args.warmup, len(bodies))):
        status, body = send(warm, i % len(bodies))
        if status != 200:
            sys.exit(f"warm-up request failed: {status} {body}")
        reference[i % len(bodies)] = body["score"]
    warm.close()

    per_client = [
        args.requests // args.concurrency + (i < args.requests % args.concurrency) for i in range(args.concurrency)
    ]

    def client(index: int) -> tuple[list[float], list[float], int, int]:
        connection = http.client.HTTPConnection(host, port, timeout=300)
        latencies, model_seconds, failed, wrong = [], [], 0, 0
        for i in range(per_client[index]):
            which = (index + i) % len(bodies)
            started = time.perf_counter()
            try:
                status, body = send(connection, which)
            except OSError:
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=300)
                continue
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failed += 1
            else:
                model_seconds.append(body["seconds"])
                with lock:
                    wrong += body["score"] != reference[which]
        connection.close()
        return latencies, model_seconds, failed, wrong

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        outcomes = list(pool.map(client, range(args.concurrency)))
    seconds = time.perf_counter() - started
    latencies = np.array([x for o in outcomes for x in o[0]]) * 1000
    model_ms = np.array([x for o in outcomes for x in o[1]]) * 1000
    failed, wrong = sum(o[2] for o in outcomes), sum(o[3] for o in outcomes)
    _, final = _get(host, port, "/health")
    if process is not None:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    load = os.getloadavg()
    print(
        json.dumps(
            {
                "model": model,
                "images": len(bodies),
                "requests": args.requests,
                "concurrency": args.concurrency,
                "workers": final["queue"]["workers"],
                "p50_ms": round(float(np.percentile(latencies, 50)), 2),
                "p90_ms": round(float(np.percentile(latencies, 90)), 2),
                "p99_ms": round(float(np.percentile(latencies, 99)), 2),
                "mean_inference_ms": round(float(model_ms.mean()), 2) if len(model_ms) else None,
                "throughput_rps": round(len(latencies) / seconds, 2),
                "failed": failed,
                "wrong": wrong,
                "rejected_503": final["queue"]["rejected"],
                "server_exit": None if process is None else process.returncode,
                "load_average_1m": round(load[0], 2),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )
    return 1 if failed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
