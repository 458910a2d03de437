"""``feedback-pipeline serve``: the champion behind /predict, /health and /metrics.

A small FastAPI + uvicorn server (the stack MLflow's own scoring server uses) that accepts
MLflow's scoring JSON, so clients of ``mlflow models serve`` work unchanged, and adds what that
server lacks: it follows the ``champion`` alias and the active serving policy without a restart,
falls back to the caller's ``rule_confidence`` when the model cannot score (or cannot be
loaded), exports Prometheus metrics, and writes every served row back to the landing zone as a
contract prediction record, so served predictions meet their feedback and the loop closes.

Faults must not become memory blow-ups or training data: the body is refused (413) past
``--max-body-bytes`` before it is read into memory, a request past ``--max-rows`` is refused, JSON
nested past ``--max-depth`` is a 400 found by a vectorised byte scan (never a RecursionError),
rows of requests marked ``X-Feedback-Test`` are not written back, the write-back buffer is capped
(``--max-buffered-rows``) and the request logs are pruned by age and size. The champion loads in
the background: the port binds at once even when MLflow does not answer.

One uvicorn worker; scoring runs on the event loop's thread with native thread pools limited to
one thread (OpenMP oversubscription on 2 cores took a single-row p99 from ~1.4 ms to ~900 ms).
It never imports dagster or ``feedback_pipeline.defs`` (an import-linter contract).

Modules, one concern each: ``protocol`` (MLflow's request formats parsed, pure), ``rows`` (row
checks and the answer's rows), ``champion`` (the loaded model and its reloader), ``records`` and
``writeback`` (served rows landed, the request log), ``metrics`` (Prometheus), ``state`` (one
request's path), ``config`` (ServerConfig and its options) and ``app`` (the HTTP wiring). This
package exports what the CLI and the tests import.
"""

from feedback_pipeline.serving.server.app import run
from feedback_pipeline.serving.server.champion import rule_fallback
from feedback_pipeline.serving.server.config import (
    ServerConfig,
    add_server_arguments,
    config_from_args,
)
from feedback_pipeline.serving.server.protocol import BadRequest, json_depth, parse_request
from feedback_pipeline.serving.server.rows import checked_rows, parse_float_column, predictions_json
from feedback_pipeline.serving.server.state import ServingState
from feedback_pipeline.serving.server.writeback import prune_request_logs

__all__ = [
    "BadRequest",
    "ServerConfig",
    "ServingState",
    "add_server_arguments",
    "checked_rows",
    "config_from_args",
    "json_depth",
    "parse_float_column",
    "parse_request",
    "predictions_json",
    "prune_request_logs",
    "rule_fallback",
    "run",
]
