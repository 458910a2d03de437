"""The serving state and one request's path through it: parse, check, score with the champion
(or the rule fallback), answer, record the metrics and hand the rows to the write-back. Plain
bytes in and an Answer out: the HTTP wiring is in ``app``."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from mlflow.exceptions import MlflowException
from threadpoolctl import threadpool_limits

from feedback_pipeline.serving.server.champion import Champion, Reloader, rule_fallback
from feedback_pipeline.serving.server.config import ServerConfig
from feedback_pipeline.serving.server.metrics import Metrics
from feedback_pipeline.serving.server.protocol import (
    RULE_CONFIDENCE,
    BadRequest,
    Table,
    parse_request,
)
from feedback_pipeline.serving.server.records import Served, utc_iso
from feedback_pipeline.serving.server.rows import (
    Rows,
    checked_rows,
    parse_float_column,
    predictions_json,
    sent_numbers,
)
from feedback_pipeline.serving.server.writeback import WriteBack

log = logging.getLogger(__package__)  # one logger for the whole server

# MLflow error codes that mean the caller's params were wrong, not that the model failed.
CLIENT_ERROR_CODES = ("INVALID_PARAMETER_VALUE", "BAD_REQUEST")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class ServingState:
    """Everything a request needs: the champion (swapped atomically), the metrics, the
    write-back."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.metrics = Metrics()
        self.writeback = WriteBack(config, self.metrics)
        self.reloader = Reloader(config, self)
        self.champion: Champion | None = None
        self.predict_failed = False  # the last predict raised: degraded until one succeeds
        self.started = time.monotonic()
        self._limited_for: Champion | None = None

    def swap(self, champion: Champion) -> None:
        self.champion = champion  # one reference assignment: requests see old or new, whole
        self.predict_failed = False
        self.metrics.reloads.inc()
        self.metrics.champion_version.set(float(champion.version))
        self.metrics.policy_version.set(float(champion.policy_version))

    def _limit_threads(self, champion: Champion) -> None:
        """One-thread native pools on the scoring thread (the event loop's), once per champion:
        a new model may have loaded new pools, and OpenMP limits are per thread."""
        threadpool_limits(limits=1)
        self._limited_for = champion

    def start(self) -> None:
        self.reloader.start()
        self.writeback.start()

    def stop(self) -> None:
        """Shutdown order (uvicorn has finished the in-flight requests): no more reloads, then
        flush."""
        self.reloader.stop()
        self.writeback.close()

    def health(self) -> dict:
        """``degraded`` with the ``reason`` while no champion is loaded (the first load still
        running, no alias, the registry unreachable) or the champion's last predict failed;
        ``reload_problem``: why the last poll failed, even while an older champion serves."""
        champion = self.champion
        problem = self.reloader.problem
        if champion is None:
            reason = problem or "no champion loaded"
        elif self.predict_failed:
            reason = f"version {champion.version} failed its last prediction"
        else:
            reason = None
        return {
            "status": "degraded" if reason else "ok",
            "reason": reason,
            "model_name": self.config.model_name,
            "alias": self.config.alias,
            "environment": self.config.environment,
            "champion_version": champion.version if champion else None,
            "policy_version": champion.policy_version if champion else None,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "loaded_at": utc_iso(champion.loaded_at) if champion else None,
            "reload_problem": problem,
        }

    def answer(
        self, body: bytes, content_type: str | None, started: float, test: bool = False
    ) -> Answer:
        """Parse, score, buffer the write-back (not for a ``test`` request) and record the
        metrics."""
        at = datetime.now(UTC)
        served_by: Champion | None = None
        buffered: Served | None = None
        try:
            table, params = parse_request(
                body, content_type, self.config.max_rows, self.config.max_depth
            )
            checked = checked_rows(table, self.config.environment)
            served, served_by, names, features = self._score(table, checked, params)
            rows, fallbacks = table.rows, int(np.sum(served["fallback"]))
            version = served_by.version if served_by else None
            status, payload = 200, predictions_json(checked.ids, version, served)
            if not test:
                confidence = np.asarray(served["blended_confidence"], dtype="float64")
                buffered = Served(utc_iso(at), version, checked, confidence, names, features)
        except BadRequest as error:
            return self.refuse(error, started, test, at)
        except Exception as error:  # a bug here must answer 500, not take the server down
            log.exception("could not answer a scoring request")
            self.metrics.errors.labels("internal").inc()
            status, rows, fallbacks, buffered = 500, 0, 0, None
            message = f"internal error: {type(error).__name__}: {error}"
            payload = json.dumps({"error_code": "INTERNAL_ERROR", "message": message}).encode()
        self._record(at, started, status, rows, fallbacks, served_by, buffered, test)
        return Answer(status, payload)

    def refuse(
        self, error: BadRequest, started: float, test: bool, at: datetime | None = None
    ) -> Answer:
        """A request answered with ``error`` (400, or 413 before its body was read): counted
        under the error's kind and logged like any other."""
        self.metrics.errors.labels(error.kind).inc()
        at = at or datetime.now(UTC)
        self._record(at, started, error.status, 0, 0, None, None, test)
        return Answer(error.status, json.dumps(error.payload()).encode())

    def _record(
        self,
        at: datetime,
        started: float,
        status: int,
        rows: int,
        fallbacks: int,
        served_by: Champion | None,
        buffered: Served | None,
        test: bool,
    ) -> None:
        """The request's metrics and its request-log line; its rows to the write-back."""
        latency = time.perf_counter() - started
        self.metrics.requests.inc()
        self.metrics.latency.observe(latency)
        self.metrics.rows.inc(rows)
        self.metrics.fallbacks.inc(fallbacks)
        self.writeback.add(
            buffered,
            {
                "at": utc_iso(at),
                "latency_ms": round(latency * 1000.0, 3),
                "rows": rows,
                "fallbacks": fallbacks,
                "status": status,
                "model_version": served_by.version if served_by else None,
                "policy_version": served_by.policy_version if served_by else None,
                "test": test,
                "server_environment": self.config.environment,
            },
        )

    def _score(
        self, table: Table, checked: Rows, params: dict | None
    ) -> tuple[dict[str, np.ndarray], Champion | None, tuple[str, ...], np.ndarray]:
        """The served columns, the champion that served them (None: the rule fallback), and
        the feature names and values to record."""
        champion = self.champion  # read once: the whole request sees one champion
        # No model: record the numeric columns the caller sent as its features.
        names = champion.features if champion is not None else sent_numbers(table)
        columns = {name: parse_float_column(table, name) for name in names}
        features = np.column_stack(list(columns.values())) if names else np.empty((table.rows, 0))
        if champion is None:
            return rule_fallback(checked.rule_confidence), None, names, features
        if self._limited_for is not champion:
            self._limit_threads(champion)
        columns[RULE_CONFIDENCE] = checked.rule_confidence
        try:
            served = champion.score(columns, table.rows, params)
        except Exception as error:
            if isinstance(error, MlflowException) and error.error_code in CLIENT_ERROR_CODES:
                raise BadRequest(error.message) from error  # the caller's params, not the model
            return self._predict_failed(champion, checked), None, names, features
        self.predict_failed = False
        return served, champion, names, features

    def _predict_failed(self, champion: Champion, checked: Rows) -> dict[str, np.ndarray]:
        """Serve every row its rule_confidence; /health says degraded until a predict works."""
        log.exception("version %s failed to predict; serving rule_confidence", champion.version)
        self.metrics.errors.labels("predict").inc()
        self.predict_failed = True
        return rule_fallback(checked.rule_confidence)
