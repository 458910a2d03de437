"""``feedback-pipeline serve``: the champion behind /predict, /health and /metrics.

The app factory and its HTTP wiring: the routes (``/predict`` and MLflow's ``/invocations``,
``/health``, ``/ping``, ``/metrics``), the body read against its size limit before it is in
memory, the lifespan that starts and stops the reload and write-back threads, and ``run``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect

from feedback_pipeline.serving.server.config import (
    ServerConfig,
    add_server_arguments,
    config_from_args,
)
from feedback_pipeline.serving.server.protocol import TooLarge
from feedback_pipeline.serving.server.state import ServingState

# A request with this header set to 1/true is a test: answered, logged and counted, not landed.
TEST_HEADER = "x-feedback-test"
TEST_VALUES = ("1", "true")


def body_too_large(size: str, limit: int) -> TooLarge:
    """The 413 for a body of ``size`` (its declared length, or "over" the limit)."""
    return TooLarge(
        f"the body is {size} bytes; send fewer rows per request", limit, "bytes", "--max-body-bytes"
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (TooLarge) once it passes ``limit`` bytes, before it is in memory: at
    once on a Content-Length over the limit, else (chunked) as soon as the bytes read so far
    pass it. uvicorn discards what the client still sends, so the connection stays usable."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(f"{int(declared):,}", limit)
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise body_too_large(f"over {limit:,}", limit)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def is_test(value: str | None) -> bool:
    """Whether an ``X-Feedback-Test`` header value marks the request as a test."""
    return value is not None and value.strip().lower() in TEST_VALUES


def create_app(config: ServerConfig) -> FastAPI:
    """The FastAPI app; its lifespan starts the reload thread (which loads the champion: the
    port binds without waiting for the registry) and the write-back thread, and on shutdown
    (uvicorn's SIGTERM/SIGINT) flushes every buffered row."""
    state = ServingState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()
        try:
            yield
        finally:
            await asyncio.to_thread(state.stop)

    app = FastAPI(title="feedback_pipeline serving", lifespan=lifespan)
    app.state.serving = state

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        test = is_test(request.headers.get(TEST_HEADER))
        try:
            body = await read_body(request, config.max_body_bytes)
        except TooLarge as error:
            answer = state.refuse(error, started, test)
        except ClientDisconnect:  # nobody to answer; not the server's error
            return Response(status_code=400)
        else:
            # Scored on the event loop's own thread: one worker scores one request at a time
            # anyway, and handing each request to another thread costs GIL switches (up to the
            # 5 ms switch interval each) that showed as tail latency under load.
            answer = state.answer(body, request.headers.get("content-type"), started, test)
        return Response(answer.body, status_code=answer.status, media_type="application/json")

    app.post("/predict")(predict)
    app.post("/invocations")(predict)  # MLflow's scoring path: its clients work unchanged

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(state.health())

    @app.get("/ping")
    async def ping() -> Response:
        """MLflow's liveness probe."""
        return Response("\n", media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def run(config: ServerConfig) -> None:
    """Serve until SIGTERM/SIGINT, in one uvicorn worker (the reload and write-back threads
    and the scoring thread belong to one process)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        workers=1,
        access_log=False,  # one line per request goes to serving/requests-*.jsonl instead
        log_level="info",
    )


def parse_args(argv: Sequence[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="python -m feedback_pipeline.serving.server",
        description=(__doc__ or "").splitlines()[0],
    )
    parser.add_argument("--data-dir", type=Path, required=True)
    add_server_arguments(parser)
    args = parser.parse_args(argv)
    return config_from_args(args, args.data_dir)


def main(argv: Sequence[str] | None = None) -> int:
    run(parse_args(argv))
    return 0
