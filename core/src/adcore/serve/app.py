"""The HTTP service: a Starlette app, a bounded queue in front of inference threads, uvicorn.

Endpoints:

* ``GET /health``: ``{"status": "ok", "models": [...], "queue": {...}}``;
* ``GET /models``: what each served model is (detector, input size, thresholds, tiling);
* ``POST /predict``: JSON ``{"image": BASE64, "model": NAME, "tile": N, "tile_stride": S,
  "include_map": false}`` (or ``"path"`` instead of ``"image"``, only under a folder the server
  was started with ``--allow-path``), or the raw image bytes as the body with the same options
  in the query string. Answers the runtime's fields: ``score``, ``normalized_score``,
  ``is_anomalous``, ``width``, ``height``, ``map`` (summary; ``values`` with ``include_map``),
  ``regions``.

The queue: at most ``workers`` requests are scored at once (threads; the model is shared) and
at most ``max_queue`` more wait. The next request gets ``503`` at once, with ``Retry-After``,
instead of waiting without bound. On SIGTERM (or Ctrl-C) uvicorn stops accepting connections,
lets the requests in flight finish (up to ``graceful_timeout`` seconds), then the pool is shut
down and the process exits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from adcore.data.image_io import ImageReadError, read_image
from adcore.serve.models import decode_image_bytes

log = logging.getLogger("adcore.serve")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class InferenceQueue:
    """``workers`` inference threads and a bounded number of waiting requests (event-loop side)."""

    def __init__(self, workers: int = 1, max_queue: int = 16) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        if max_queue < 0:
            raise ValueError(f"--max-queue must be at least 0, got {max_queue}")
        self.workers, self.max_queue = workers, max_queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="adcore-inference")
        self.admitted = 0  # running + waiting; touched only on the event loop's thread
        self.served = self.rejected = self.failed = 0

    def try_admit(self) -> bool:
        if self.admitted >= self.workers + self.max_queue:
            self.rejected += 1
            return False
        self.admitted += 1
        return True

    async def run(self, function, *args):
        """Run ``function(*args)`` on an inference thread (the caller was admitted)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(function, *args))
        finally:
            self.admitted -= 1

    def state(self) -> dict:
        return {
            "workers": self.workers,
            "max_queue": self.max_queue,
            "running": min(self.admitted, self.workers),
            "waiting": max(0, self.admitted - self.workers),
            "served": self.served,
            "rejected": self.rejected,
            "failed": self.failed,
        }

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


def _int_option(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise HTTPError(400, f"{name} must be an integer, got {value!r}") from None
    if number < 1:
        raise HTTPError(400, f"{name} must be positive, got {number}")
    return number


def _bool_option(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _allowed_path(text: Any, allowed: list[Path]) -> Path:
    if not allowed:
        raise HTTPError(
            403, "reading server paths is disabled: send the image as base64 or bytes (or start with --allow-path DIR)"
        )
    if not isinstance(text, str) or not text:
        raise HTTPError(400, "path must be a non-empty string")
    path = Path(text).resolve()
    if not any(path.is_relative_to(root) for root in allowed):
        raise HTTPError(403, f"{text}: outside the folders this server may read")
    return path


def create_app(
    models: dict[str, Any],
    workers: int = 1,
    max_queue: int = 16,
    allow_paths: list[str] | None = None,
    max_image_bytes: int = 32 * 1024**2,
) -> Starlette:
    """The ASGI app serving ``models`` (name -> :mod:`adcore.serve.models` model); the first is the default."""
    if not models:
        raise ValueError("serve needs at least one model")
    queue = InferenceQueue(workers, max_queue)
    allowed = [Path(p).resolve() for p in allow_paths or []]
    default = next(iter(models))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "models": list(models), "queue": queue.state()})

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse({"default": default, "models": [m.describe() for m in models.values()]})

    async def _parse(request: Request) -> tuple[Any, dict, str]:
        """(payload: bytes or Path, options, source name) from a JSON body or raw image bytes."""
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_image_bytes * 4 // 3 + 4096:
            raise HTTPError(
                413, f"request body of {int(length)} bytes exceeds the limit ({max_image_bytes} image bytes)"
            )
        body = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            try:
                fields = json.loads(body)
            except ValueError as exc:
                raise HTTPError(400, f"body is not valid JSON ({exc})") from None
            if not isinstance(fields, dict):
                raise HTTPError(400, "JSON body must be an object with 'image' (base64) or 'path'")
            if "image" in fields:
                if not isinstance(fields["image"], str):
                    raise HTTPError(400, "image must be a base64 string")
                try:
                    payload: Any = base64.b64decode(fields["image"], validate=True)
                except (binascii.Error, ValueError):
                    raise HTTPError(400, "image is not valid base64") from None
                name = str(fields.get("name") or "upload")
            elif "path" in fields:
                payload = _allowed_path(fields["path"], allowed)
                name = str(payload)
            else:
                raise HTTPError(400, "JSON body needs 'image' (base64 of an encoded image) or 'path'")
            options = fields
        else:
            payload, name, options = body, "upload", dict(request.query_params)
        if isinstance(payload, bytes) and len(payload) > max_image_bytes:
            raise HTTPError(413, f"image of {len(payload)} bytes exceeds the limit of {max_image_bytes}")
        model_name = options.get("model") or default
        if model_name not in models:
            raise HTTPError(404, f"unknown model {model_name!r}: served are {sorted(models)}")
        return (
            payload,
            {
                "model": model_name,
                "tile": _int_option(options.get("tile"), "tile"),
                "tile_stride": _int_option(options.get("tile_stride"), "tile_stride"),
                "include_map": _bool_option(options.get("include_map", False)),
            },
            name,
        )

    def _score(payload: Any, options: dict, name: str) -> dict:
        started = time.perf_counter()
        image = read_image(payload) if isinstance(payload, Path) else decode_image_bytes(payload, name)
        model = models[options["model"]]
        result = model.predict(image, options["tile"], options["tile_stride"])
        out = {"model": options["model"], **result.to_json(include_map=options["include_map"])}
        out["seconds"] = time.perf_counter() - started
        return out

    async def predict(request: Request) -> JSONResponse:
        if not queue.try_admit():
            state = queue.state()
            return JSONResponse(
                {
                    "error": f"queue full: {state['running']} running and {state['waiting']} waiting "
                    f"(--workers {queue.workers}, --max-queue {queue.max_queue}); retry later"
                },
                status_code=503,
                headers={"Retry-After": "1"},
            )
        admitted_at = time.perf_counter()
        try:
            try:
                payload, options, name = await _parse(request)
            except BaseException:
                queue.admitted -= 1
                raise
            out = await queue.run(_score, payload, options, name)
            out["queued_seconds"] = max(0.0, time.perf_counter() - admitted_at - out["seconds"])
            queue.served += 1
            return JSONResponse(out)
        except HTTPError as exc:
            queue.failed += 1
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except (ImageReadError, ValueError, TypeError) as exc:
            queue.failed += 1
            return JSONResponse({"error": str(exc)}, status_code=400)
        except Exception as exc:
            queue.failed += 1
            log.exception("prediction failed")
            return JSONResponse({"error": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @asynccontextmanager
    async def lifespan(app):
        yield
        queue.shutdown()  # after uvicorn finished the requests in flight

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/models", list_models, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.queue = queue
    app.state.models = models
    return app


def run_server(
    app: Starlette, host: str = "127.0.0.1", port: int = 8000, graceful_timeout: float = 30.0, log_level: str = "info"
) -> None:
    """Serve ``app`` until SIGTERM/SIGINT; requests in flight then finish (up to ``graceful_timeout`` s).

    Returns normally after a graceful stop (the process can exit with status 0); a second
    Ctrl-C stops at once.
    """
    import signal

    import uvicorn

    class GracefulServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # uvicorn re-raises the signal after its graceful shutdown (the process then dies
            # of SIGTERM); here the shutdown is the whole answer to the signal.
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
                return
            if not self.should_exit:
                state = app.state.queue.state()
                log.warning("stopping: finishing %d request(s) in flight", state["running"] + state["waiting"])
            self.should_exit = True

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_timeout, access_log=False
    )
    GracefulServer(config).run()
