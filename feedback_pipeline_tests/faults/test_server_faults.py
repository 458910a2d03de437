"""Faults at ``feedback-pipeline serve``, on a real server process on a loopback port: bodies
too large (by Content-Length and chunked) and too many rows are refused before they cost memory,
deep JSON is a 400 and never a 500, test traffic never becomes landing data, 50 clients get no
error, request logs are pruned, and an unreachable MLflow does not keep the port closed."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.serving.server import (
    ServerConfig,
    ServingState,
    json_depth,
    prune_request_logs,
)
from feedback_pipeline_tests.conftest import with_mlflow_store
from feedback_pipeline_tests.servers import BIN, Server, start_on_port_zero, wait_until
from feedback_pipeline_tests.serving.test_server import (
    fit_logistic,
    get_json,
    landed_records,
    landed_with,
    logged,
    metric,
    register,
    request_log,
    subprocess_env,
)

pytestmark = pytest.mark.end_to_end

MAX_BODY = 1 << 20  # the test server's --max-body-bytes
MAX_ROWS = 500  # and --max-rows
RETENTION_DAYS, RETENTION_BYTES = 7, 100_000
UNREACHABLE_MLFLOW = "http://127.0.0.1:9"  # the discard port: nothing listens there
LOG_LINE = (
    '{"at": "2026-01-01T00:00:00.000000Z", "latency_ms": 1.0, "rows": 1, "fallbacks": 0, '
    '"status": 200, "model_version": "1", "policy_version": 0}\n'
)


def start_server(command: list[str], env: dict[str, str], log: Path) -> tuple[Server, str]:
    """``command`` on a port the kernel picks, answering /health."""
    return start_on_port_zero([*command, "--port", "0"], env, log, "/health", timeout=90)


def serve_command(data_dir: Path, *options: str) -> list[str]:
    return [str(BIN / "feedback-pipeline"), "--data-dir", str(data_dir), "serve", *options]


def call(
    url: str,
    body: bytes | Iterator[bytes],
    headers: dict[str, str] | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, dict]:
    """POST /predict over http.client: a bytes body with its Content-Length, an iterator of
    chunks with Transfer-Encoding: chunked (no Content-Length)."""
    own = connection is None
    conn = connection or http.client.HTTPConnection(url.removeprefix("http://"), timeout=120)
    try:
        conn.request(
            "POST",
            "/predict",
            body=body,
            headers={"Content-Type": "application/json", **(headers or {})},
            encode_chunked=not isinstance(body, bytes),
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        if own:
            conn.close()


def row(prediction_id: str, **extra: Any) -> dict:
    return {
        "prediction_id": prediction_id,
        "momentum": 0.3,
        "rsi": -0.1,
        "gap": 0.2,
        "rule_confidence": 0.6,
        **extra,
    }


def records(*rows: dict) -> bytes:
    return json.dumps({"dataframe_records": list(rows)}).encode()


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS) from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def write_request_logs(folder: Path, now: datetime) -> dict[str, Path]:
    """Request logs the server must prune at start: one past the age limit, and days that
    together hold more than the byte limit (today's, yesterday's and the day before fit)."""
    folder.mkdir(parents=True)
    sizes = {10: 1_000, 3: 40_000, 2: 40_000, 1: 40_000, 0: 10_000}  # days ago -> bytes
    paths = {}
    for days_ago, size in sizes.items():
        day = (now - timedelta(days=days_ago)).strftime("%Y%m%d")
        path = folder / f"requests-{day}.jsonl"
        path.write_text(LOG_LINE * (size // len(LOG_LINE)))
        paths[f"-{days_ago}"] = path
    return paths


@dataclass
class Running:
    server: Server
    url: str
    data_dir: Path
    old_logs: dict[str, Path]  # "-N": the request log dated N days ago, written before start
    today_log_text: str


@pytest.fixture(scope="module")
def running(tmp_path_factory) -> Iterator[Running]:
    """One server with a champion, small limits (1 MiB, 500 rows), environment ``dev``,
    flushing every 0.5 s, over a request-log folder that needs pruning."""
    # A module fixture runs before the per-test isolation (see test_server's ``served``).
    saved = {
        name: os.environ.pop(name, None) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    }
    data_dir = tmp_path_factory.mktemp("serve_faults")
    old_logs = write_request_logs(data_dir / "serving", datetime.now(UTC))
    today_text = old_logs["-0"].read_text()
    registry = local_registry(data_dir)
    registry.set_alias(CHAMPION, register(registry, fit_logistic(1.0, 1)))
    server, url = start_server(
        serve_command(
            data_dir,
            *("--reload-interval", "0.5", "--flush-seconds", "0.5", "--environment", "dev"),
            *("--max-body-bytes", str(MAX_BODY), "--max-rows", str(MAX_ROWS)),
            *("--log-retention-days", str(RETENTION_DAYS)),
            *("--log-retention-bytes", str(RETENTION_BYTES)),
        ),
        subprocess_env(),
        data_dir / "server.log",
    )
    try:
        wait_until(lambda: get_json(f"{url}/health")["status"] == "ok", 60, "a champion", server)
        yield Running(server, url, data_dir, old_logs, today_text)
    finally:
        server.stop()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def test_request_logs_are_pruned_by_age_and_size_and_today_is_kept(running):
    logs = running.old_logs
    wait_until(lambda: not logs["-3"].exists(), 10, "the oldest day over the size limit pruned")
    assert not logs["-10"].exists(), "a log older than --log-retention-days was kept"
    assert logs["-2"].exists() and logs["-1"].exists(), "pruned more than the size limit needs"
    assert logs["-0"].read_text().startswith(running.today_log_text)
    assert "pruned 2 request logs" in running.server.tail(20_000)


def test_prune_request_logs_keeps_today_and_what_it_does_not_own(tmp_path):
    now = datetime(2026, 3, 10, 12, tzinfo=UTC)
    names = {
        "today": "requests-20260310.jsonl",
        "future": "requests-20260311.jsonl",
        "yesterday": "requests-20260309.jsonl",
        "old": "requests-20260101.jsonl",
        "landing": "served-prod-20260101T000000000000-1-1.jsonl",
        "other": "requests-notes.jsonl",
    }
    for name in names.values():
        (tmp_path / name).write_text("x" * 100)
    # Within the size limit: only the old one goes, by age.
    deleted = prune_request_logs(tmp_path, now, days=30, max_bytes=10_000)
    assert [path.name for path in deleted] == [names["old"]]
    # Today's file alone is over the limit: every older log goes, today's and later stay.
    deleted = prune_request_logs(tmp_path, now, days=30, max_bytes=10)
    assert [path.name for path in deleted] == [names["yesterday"]]
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(names[k] for k in ("today", "future", "landing", "other"))


def test_oversized_bodies_and_too_many_rows_are_413_naming_the_limit(running):
    url = running.url
    too_large_before = metric(url, "feedback_serving_errors_total", kind="too_large")
    big = b" " * (MAX_BODY + 1)  # whitespace: only its size can refuse it

    status, answer = call(url, big)
    assert status == 413, answer
    assert answer["error_code"] == "REQUEST_TOO_LARGE" and answer["limit"] == MAX_BODY
    assert answer["option"] == "--max-body-bytes" and f"{MAX_BODY:,} bytes" in answer["message"]

    chunks = iter([b" " * 65_536] * (2 * MAX_BODY // 65_536))  # chunked, no Content-Length
    status, answer = call(url, chunks)
    assert status == 413 and answer["option"] == "--max-body-bytes", answer

    rows = [row(f"many-{i}") for i in range(MAX_ROWS + 1)]
    status, answer = call(url, records(*rows))
    assert status == 413 and answer["option"] == "--max-rows", answer
    assert answer["limit"] == MAX_ROWS and f"{MAX_ROWS + 1:,} rows" in answer["message"]

    # At the limits, and chunked, it serves: the limits refuse only what is past them.
    status, answer = call(url, records(*rows[:MAX_ROWS]))
    assert status == 200 and len(answer["predictions"]) == MAX_ROWS, answer
    body = records(row("chunked-ok"))
    status, answer = call(url, iter([body[:10], body[10:]]))
    assert status == 200, answer
    assert answer["predictions"][0]["prediction_id"] == "chunked-ok"
    assert answer["predictions"][0]["fallback"] is False
    assert metric(url, "feedback_serving_errors_total", kind="too_large") - too_large_before == 3
    assert get_json(f"{url}/health")["status"] == "ok"


def test_deep_json_is_a_400_not_a_500(running):
    url = running.url
    internal_before = metric(url, "feedback_serving_errors_total", kind="internal")
    for body in (b"[" * 100_000, b'{"dataframe_records": ' + b"[" * 40 + b"]" * 40 + b"}"):
        status, answer = call(url, body)
        assert status == 400, answer
        assert "--max-depth" in answer["message"] and "32" in answer["message"], answer
    # Brackets inside strings (an escaped quote too) are not nesting.
    entity = '\\"' + "[" * 100 + "{" * 100
    status, answer = call(url, records(row("brackets", entity_id=json.loads(f'"{entity}"'))))
    assert status == 200, answer
    assert metric(url, "feedback_serving_errors_total", kind="internal") == internal_before


def test_json_depth_counts_nesting_outside_strings():
    assert json_depth(b'{"a": [[1, {"b": "[[[[\\"]]"}], []]}') == 4
    assert json_depth(b'["\\\\", [["\\\\\\"["]]]') == 3  # an escaped backslash, then a quote
    deep = b"[" * 1_000_000 + b"]" * 1_000_000  # across many scan chunks
    assert json_depth(deep) == 1_000_000 and json_depth(deep, stop_above=32) > 32


def test_test_requests_are_not_written_back_and_the_environment_is_recorded(running):
    url, data_dir = running.url, running.data_dir
    requests_before = metric(url, "feedback_serving_requests_total")
    status, answer = call(url, records(row("test-row")), {"X-Feedback-Test": "1"})
    assert status == 200 and answer["predictions"][0]["prediction_id"] == "test-row"
    status, _ = call(url, records(row("test-row-2")), {"X-Feedback-Test": "true"})
    assert status == 200
    status, _ = call(url, records(row("real-row"), row("own-env", environment="prod")))
    assert status == 200
    assert metric(url, "feedback_serving_requests_total") - requests_before == 3

    # Flushed in order: once the real rows have landed, the test rows would have too.
    wait_until(
        lambda: landed_with(data_dir, ["real-row", "own-env"]), 20, "rows landed", running.server
    )
    frame = landed_records(data_dir).set_index("prediction_id")
    assert not {"test-row", "test-row-2"} & set(frame.index)
    assert frame.loc["real-row", "environment"] == "dev"  # the server's, for a row without one
    assert frame.loc["own-env", "environment"] == "prod"  # a row's own is kept
    files = list((data_dir / "landing" / "predictions").glob("served-*.jsonl"))
    assert files and all(path.name.startswith("served-dev-") for path in files)

    wait_until(lambda: logged(data_dir, 3, status=200), 20, "the request log", running.server)
    log = request_log(data_dir)
    ours = log[log["server_environment"].notna()]  # the lines this server wrote
    assert len(ours) >= 3 and (ours["server_environment"] == "dev").all()
    tests = ours[ours["test"] == True]  # noqa: E712 - elementwise
    assert len(tests) >= 2 and (tests["rows"] == 1).all() and (tests["status"] == 200).all()
    assert (ours.loc[ours["rows"] == 2, "test"] == False).any()  # noqa: E712


def scoring_body(size: int) -> bytes:
    """A valid ``dataframe_records`` body of about ``size`` bytes of distinct rows: parsed, it
    would cost the server many times its size (a 46 MB one took RSS from 406 to 802 MB)."""
    template = (
        '{"prediction_id":"big-%d","momentum":0.31,"rsi":-0.12,"gap":0.2,'
        '"rule_confidence":0.6,"entity_id":"AAPL","variant":"A"}'
    )
    count = size // len(template % 0)
    return ('{"dataframe_records":[' + ",".join(template % i for i in range(count)) + "]}").encode()


def test_oversized_requests_do_not_grow_the_server(running):
    """Three 46 MB scoring bodies with a Content-Length and three chunked at once: all refused,
    and the server's resident memory, sampled every millisecond, stays under twice its idle
    size."""
    url, pid = running.url, running.server.process.pid
    for i in range(20):  # warm: one-time allocations are not the limit's doing
        assert call(url, records(row(f"warm-{i}")), {"X-Feedback-Test": "1"})[0] == 200
    idle = rss_bytes(pid)
    big = scoring_body(44_000_000)
    statuses: list[int] = []
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_bytes(pid))
            time.sleep(0.001)

    def send(chunked: bool) -> None:
        mib = 1 << 20
        body = iter([big[i : i + mib] for i in range(0, len(big), mib)]) if chunked else big
        statuses.append(call(url, body, {"X-Feedback-Test": "1"})[0])

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=send, args=(i % 2 == 1,)) for i in range(6)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(120)
    done.set()
    sampler.join()
    peak = max(samples)
    print(
        f"\nserver RSS: idle {idle / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB under "
        f"6 x {len(big) / 1e6:.0f} MB refused bodies ({len(samples)} samples)"
    )
    assert statuses == [413] * 6
    assert peak < 2 * idle, f"RSS went from {idle} to {peak} bytes"
    assert call(url, records(row("after-big")), {"X-Feedback-Test": "1"})[0] == 200


def test_fifty_clients_for_ten_seconds_get_no_error(running):
    """50 concurrent keep-alive clients of single-row requests (marked as tests, as load tests
    should be): every answer a 200, and none of their rows becomes landing data."""
    url, clients, seconds = running.url, 50, 10.0
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
        start.wait()
        deadline = time.monotonic() + seconds
        n = 0
        try:
            while time.monotonic() < deadline:
                body = records(row(f"load-{index}-{n}"))
                began = time.perf_counter()
                try:
                    status, answer = call(url, body, {"X-Feedback-Test": "1"}, conn)
                except (OSError, http.client.HTTPException) as error:
                    errors.append(f"{type(error).__name__}: {error}")
                    conn.close()
                    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
                    continue
                latencies[index].append(time.perf_counter() - began)
                if status != 200:
                    errors.append(f"{status}: {answer}")
                n += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join(seconds + 120)
    elapsed = time.monotonic() - began
    all_latencies = np.concatenate([np.asarray(x) for x in latencies])
    p50, p99 = np.percentile(all_latencies, [50, 99]) * 1000
    print(
        f"\n{clients} clients: {len(all_latencies)} requests in {elapsed:.1f} s = "
        f"{len(all_latencies) / elapsed:.0f}/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"{len(errors)} errors"
    )
    assert not errors, errors[:5]
    assert len(all_latencies) >= clients * 10  # every client got answers, not just one

    # A real row after them: once it has landed, any load row would have landed before it.
    assert call(url, records(row("after-load")))[0] == 200
    wait_until(
        lambda: landed_with(running.data_dir, ["after-load"]), 20, "after-load", running.server
    )
    assert not landed_records(running.data_dir)["prediction_id"].str.startswith("load-").any()


def test_serve_binds_at_once_when_mlflow_is_unreachable(tmp_path):
    """MLflow's client retrying for minutes (its own defaults, exported) must not keep the port
    closed: /health answers degraded with the reason, rows are served their rule_confidence,
    and SIGTERM still stops it promptly."""
    env = subprocess_env(
        MLFLOW_TRACKING_URI=UNREACHABLE_MLFLOW,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="7",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="2",
        MLFLOW_HTTP_REQUEST_TIMEOUT="120",
    )
    began = time.monotonic()
    server, url = start_server(serve_command(tmp_path), env, tmp_path / "server.log")
    try:
        bound = time.monotonic() - began
        health = get_json(f"{url}/health")
        assert health["status"] == "degraded" and health["champion_version"] is None, health
        assert "feedback_model@champion" in health["reason"], health
        assert bound < 30, f"/health took {bound:.1f} s"
        status, answer = call(url, records(row("no-mlflow", rule_confidence=0.72)))
        assert status == 200, answer
        served = answer["predictions"][0]
        assert served["fallback"] is True and served["blended_confidence"] == 0.72
        assert served["model_version"] is None and served["decision"] is True
    finally:
        stopping = time.monotonic()
        server.stop(grace=20)
    assert server.process.returncode in (0, -signal.SIGTERM), server.tail()
    assert time.monotonic() - stopping < 15, "shutdown waited for MLflow's retries"


def test_write_back_buffer_is_capped_while_writes_fail(tmp_path):
    """In process: with the landing folder unwritable the rows are kept up to
    --max-buffered-rows, the rest dropped and counted; once writable, what was kept lands."""
    config = ServerConfig(data_dir=tmp_path, flush_rows=10, max_rows=10, max_buffered_rows=20)
    state = ServingState(config)
    (tmp_path / "landing").write_text("a file where the landing folder should be")

    def send(prefix: str) -> None:
        body = records(*(row(f"{prefix}-{i}") for i in range(10)))
        assert state.answer(body, "application/json", time.perf_counter()).status == 200

    def dropped() -> float:
        value = state.metrics.registry.get_sample_value(
            "feedback_serving_writeback_dropped_rows_total"
        )
        return float(value or 0.0)

    send("a")
    send("b")
    send("c")  # over the cap of 20: dropped
    assert dropped() == 10
    assert not state.writeback.flush()  # the write fails: a and b are kept
    send("d")  # still full: dropped
    assert dropped() == 20
    (tmp_path / "landing").unlink()
    assert state.writeback.flush()
    ids = set(landed_records(tmp_path)["prediction_id"])
    assert ids == {f"{p}-{i}" for p in "ab" for i in range(10)}
    send("e")  # room again
    assert state.writeback.flush() and dropped() == 20
    assert {f"e-{i}" for i in range(10)} <= set(landed_records(tmp_path)["prediction_id"])


def test_a_failed_reload_keeps_serving_the_champion_it_has(tmp_path):
    """In process: the alias moves to a version whose model files are gone (a failed upload,
    a pruned artifact store). The poll fails, says why, counts it, and v1 goes on serving."""
    registry = local_registry(with_mlflow_store(tmp_path))
    first = register(registry, fit_logistic(1.0, 1))
    registry.set_alias(CHAMPION, first)
    state = ServingState(ServerConfig(data_dir=tmp_path))
    state.reloader.check()
    assert state.champion is not None and state.champion.version == first
    assert state.reloader.problem is None

    second = register(registry, fit_logistic(-1.0, 2))
    source = registry.client.get_model_version(registry.model_name, second).source
    files = tmp_path / "mlartifacts" / "models" / source.removeprefix("models:/")
    assert files.is_dir(), source
    shutil.rmtree(files)
    registry.set_alias(CHAMPION, second)
    state.reloader.check()

    assert state.champion.version == first  # still the one that loaded
    assert "keeping the current champion" in state.reloader.problem
    assert f"feedback_model@{CHAMPION} failed" in state.reloader.problem
    errors = state.metrics.registry.get_sample_value(
        "feedback_serving_errors_total", {"kind": "reload"}
    )
    assert errors == 1
    answer = state.answer(records(row("after-failed-reload")), "application/json", 0.0)
    assert answer.status == 200
    (served,) = json.loads(answer.body)["predictions"]
    assert served["model_version"] == first and served["fallback"] is False
