"""``feedback-pipeline serve`` as a real process on a loopback port, against a real MLflow
sqlite registry: scoring in MLflow's formats, per-row fallback, hot reloads of the alias and the
policy, metrics, and served rows that land, ingest and meet their feedback."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from feedback_pipeline.ingest.landing_files import ingest_kind
from feedback_pipeline.labels.outcomes import build_labeled_outcomes
from feedback_pipeline.registry.mlflow_registry import Registry, local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.served_policy import ServingPolicy
from feedback_pipeline.settings import LabelingSettings, Settings
from feedback_pipeline.training.families import fit
from feedback_pipeline.training.splits import Split
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline.warehouse.tables import LABELED_OUTCOMES
from feedback_pipeline_tests.conftest import with_mlflow_store
from feedback_pipeline_tests.servers import (
    BIN,
    Server,
    http_ok,
    listening_url,
    wait_until,
    without_mlflow_env,
)

FEATURES = ["momentum", "rsi", "gap"]
POLICY_COLUMNS = ["probability", "calibrated", "blended_confidence", "decision"]
SERVED_COLUMNS = ["prediction_id", "model_version", *POLICY_COLUMNS, "fallback", "policy_version"]
SHADOW = "shadow"  # the write-back server follows this alias, unset when it starts


def fit_logistic(sign: float, seed: int) -> Any:
    """A small logistic regression whose label follows ``sign`` x momentum."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(200, len(FEATURES))), columns=FEATURES)
    y = (sign * X["momentum"] + rng.normal(scale=0.5, size=200) > 0).astype(np.int64).to_numpy()
    times = np.full(200, np.datetime64("2026-01-01"), "datetime64[us]")
    family = "logistic_regression"
    params = Settings().models.hyperparameters.for_family(family)
    return fit(family, params, Split(X, y, np.ones(200), times, times), seed)


def register(registry: Registry, estimator: Any) -> str:
    example = pd.DataFrame(np.zeros((5, len(FEATURES))), columns=FEATURES)
    return registry.log_challenger(
        estimator, "logistic_regression", FEATURES, example, {}, {}, {}, "# card"
    ).version


def subprocess_env(**extra: str) -> dict[str, str]:
    """The test's environment without its MLflow URIs, one native thread, unbuffered."""
    env = without_mlflow_env()
    env.update(
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        **extra,
    )
    return env


def post(url: str, payload: Any) -> tuple[int, dict]:
    """POST JSON (a str or bytes body is sent as is); the status and the decoded answer."""
    body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
    request = urllib.request.Request(
        url,
        data=body.encode() if isinstance(body, str) else body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def metric(base: str, name: str, **labels: str) -> float:
    """One sample of /metrics, parsed by prometheus_client's own parser."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not in /metrics:\n{text}")


def served_frame(answer: dict) -> pd.DataFrame:
    frame = pd.DataFrame(answer["predictions"])
    assert list(frame.columns) == SERVED_COLUMNS
    return frame


def landed_records(data_dir: Path) -> pd.DataFrame:
    """Every record in the served landing files (their dot-named temp files excluded)."""
    folder = data_dir / "landing" / "predictions"
    lines = [
        json.loads(line)
        for path in sorted(folder.glob("served-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return pd.DataFrame(lines)


def request_log(data_dir: Path) -> pd.DataFrame:
    lines = [
        json.loads(line)
        for path in sorted((data_dir / "serving").glob("requests-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return pd.DataFrame(lines)


def landed_with(data_dir: Path, ids: list[str]) -> bool:
    """Whether the landed records include ``ids`` yet."""
    frame = landed_records(data_dir)
    return bool(len(frame)) and set(ids) <= set(frame["prediction_id"])


def logged(data_dir: Path, count: int, **where: Any) -> bool:
    """Whether ``count`` lines of the request log match ``where`` yet."""
    frame = request_log(data_dir)
    if not len(frame):
        return False
    return np.logical_and.reduce([frame[k] == v for k, v in where.items()]).sum() >= count


def none_for_null(values: pd.Series) -> list:
    return [None if pd.isna(v) else v for v in values]


@dataclass
class Running:
    """Two registered versions and two running servers on one registry."""

    registry: Registry
    versions: list[str]
    estimators: dict[str, Any]  # version -> the fitted estimator
    main: Server  # follows champion; flushes every 0.5 s
    main_url: str
    main_dir: Path
    writeback: Server  # follows SHADOW; flushes only at shutdown; environment dev
    writeback_url: str
    writeback_dir: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Running]:
    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    # A module fixture runs before the per-test isolation: an earlier test's URI (mlflow exports
    # it) would point this registry at another store than the servers' own data directory.
    for name in saved:
        os.environ.pop(name, None)
    main_dir = tmp_path_factory.mktemp("serve_main")
    writeback_dir = tmp_path_factory.mktemp("serve_writeback")
    registry = local_registry(with_mlflow_store(main_dir))
    estimators = [fit_logistic(1.0, 1), fit_logistic(-1.0, 2)]
    versions = [register(registry, estimators[0])]
    registry.set_alias(CHAMPION, versions[0])
    # The front door, `feedback-pipeline serve`, and the module's own entry point.
    main = Server(
        [str(BIN / "feedback-pipeline"), "--data-dir", str(main_dir), "serve"]
        + ["--port", "0"]
        + ["--reload-interval", "0.5", "--flush-seconds", "0.5"],
        subprocess_env(),
        main_dir / "server.log",
    )
    # The registry through $MLFLOW_TRACKING_URI, its own data directory, no flush before exit.
    writeback = Server(
        [sys.executable, "-m", "feedback_pipeline.serving.server"]
        + ["--data-dir", str(writeback_dir), "--port", "0"]
        + ["--alias", SHADOW, "--reload-interval", "0.5", "--flush-seconds", "600"]
        + ["--flush-rows", "100000", "--environment", "dev"],
        subprocess_env(MLFLOW_TRACKING_URI=registry.tracking_uri),
        writeback_dir / "server.log",
    )
    try:
        versions.append(register(registry, estimators[1]))  # while the servers start
        main_url, writeback_url = listening_url(main), listening_url(writeback)
        wait_until(lambda: http_ok(f"{main_url}/health"), 120, "serve /health", main)
        # Its first load may have met the registration above in sqlite: the next poll retries.
        wait_until(lambda: get_json(f"{main_url}/health")["status"] == "ok", 30, "ok", main)
        wait_until(lambda: http_ok(f"{writeback_url}/health"), 120, "serve /health", writeback)
        yield Running(
            registry,
            versions,
            dict(zip(versions, estimators, strict=True)),
            main,
            main_url,
            main_dir,
            writeback,
            writeback_url,
            writeback_dir,
        )
    finally:
        main.stop()
        writeback.stop()
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def scoring_rows() -> pd.DataFrame:
    """Four complete rows and one missing ``rsi`` (the model cannot score it)."""
    return pd.DataFrame(
        {
            "momentum": [-1.5, -0.2, 0.3, 1.8, 0.9],
            "rsi": [0.1, -0.4, 1.2, 0.0, None],
            "gap": [0.5, 0.0, -0.3, 0.2, 0.1],
            "rule_confidence": [0.2, 0.45, 0.55, 0.8, 0.37],
        }
    )


def test_health_and_metrics_answer(served):
    health = get_json(f"{served.main_url}/health")
    champion = served.registry.alias_version(CHAMPION)
    assert health["status"] == "ok"
    assert health["model_name"] == "feedback_model" and health["alias"] == CHAMPION
    assert health["champion_version"] == champion
    assert health["policy_version"] == served.registry.active_policy_version()
    assert health["uptime_seconds"] > 0 and health["loaded_at"].endswith("Z")

    with urllib.request.urlopen(f"{served.main_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "# TYPE feedback_serving_latency_seconds histogram" in text
    assert 'feedback_serving_latency_seconds_bucket{le="0.0005"}' in text
    for counter in ("requests", "errors", "rows", "fallbacks", "reloads"):
        assert f"# TYPE feedback_serving_{counter}_total counter" in text
    assert metric(served.main_url, "feedback_serving_champion_version") == float(champion)
    assert metric(served.main_url, "feedback_serving_reloads_total") >= 1


def test_predict_serves_mlflow_formats_with_per_row_fallback(served):
    url = served.main_url
    version = get_json(f"{url}/health")["champion_version"]
    rows = scoring_rows()
    fallbacks_before = metric(url, "feedback_serving_fallbacks_total")
    rows_before = metric(url, "feedback_serving_rows_total")

    status, split_answer = post(f"{url}/predict", {"dataframe_split": rows.to_dict("split")})
    assert status == 200, split_answer
    ids = [f"rec-{i}" for i in range(len(rows))]
    records = rows.assign(prediction_id=ids, entity_id="AAPL")
    status, records_answer = post(
        f"{url}/invocations",
        {"dataframe_records": json.loads(records.to_json(orient="records")), "params": {}},
    )
    assert status == 200, records_answer

    by_split, by_records = served_frame(split_answer), served_frame(records_answer)
    assert by_split["prediction_id"].str.fullmatch("[0-9a-f]{32}").all()  # assigned uuid4 hex
    assert by_records["prediction_id"].tolist() == ids
    pd.testing.assert_frame_equal(
        by_split.drop(columns="prediction_id"), by_records.drop(columns="prediction_id")
    )
    expected = served.estimators[version].predict_proba(rows.loc[:3, FEATURES])[:, 1]
    np.testing.assert_allclose(by_records.loc[:3, "probability"], expected, rtol=1e-9)
    assert (by_records["model_version"] == version).all()
    assert by_records["fallback"].tolist() == [False, False, False, False, True]
    fallback = by_records.loc[4]
    assert fallback["blended_confidence"] == 0.37 and pd.isna(fallback["probability"])
    assert not fallback["decision"]
    assert metric(url, "feedback_serving_fallbacks_total") - fallbacks_before == 2
    assert metric(url, "feedback_serving_rows_total") - rows_before == 2 * len(rows)

    # Within a flush interval both requests' rows are landing records, as served.
    wait_until(
        lambda: landed_with(served.main_dir, ids), 20, "served rows in landing files", served.main
    )
    landed = landed_records(served.main_dir).set_index("prediction_id")
    assert set(by_split["prediction_id"]) <= set(landed.index)
    mine = landed.loc[ids]
    np.testing.assert_allclose(mine["confidence"], by_records["blended_confidence"], rtol=1e-12)
    assert (mine["model_version"] == version).all() and (mine["entity_id"] == "AAPL").all()
    assert (mine["environment"] == "prod").all()
    assert mine["predicted_at"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z").all()
    assert mine.loc["rec-0", "features"] == {"momentum": -1.5, "rsi": 0.1, "gap": 0.5}
    assert mine.loc["rec-4", "features"] == {"momentum": 0.9, "rsi": None, "gap": 0.1}
    assert not list((served.main_dir / "landing" / "predictions").glob(".*"))  # no temp left
    wait_until(
        lambda: logged(served.main_dir, rows=len(rows), count=2), 20, "request log", served.main
    )
    log = request_log(served.main_dir)
    ours = log[(log["rows"] == len(rows)) & (log["status"] == 200)]
    assert len(ours) >= 2 and (ours["fallbacks"] == 1).all() and (ours["latency_ms"] > 0).all()


def test_params_go_through_mlflow_and_are_checked_against_the_signature(served):
    """With params the server calls MLflow's ``predict``, which checks them: score_missing
    scores the row missing ``rsi`` (the pipeline imputes it); a wrong type is the caller's
    400, not a fallback."""
    url = served.main_url
    rows = json.loads(scoring_rows().to_json(orient="records"))
    status, answer = post(
        f"{url}/predict", {"dataframe_records": rows, "params": {"score_missing": True}}
    )
    assert status == 200, answer
    scored = served_frame(answer)
    assert not scored["fallback"].any()
    version = scored.loc[4, "model_version"]
    imputed = served.estimators[version].predict_proba(scoring_rows().loc[[4], FEATURES])[:, 1]
    np.testing.assert_allclose(scored.loc[4, "probability"], imputed[0], rtol=1e-9)

    status, answer = post(
        f"{url}/predict", {"dataframe_records": rows, "params": {"score_missing": "sometimes"}}
    )
    assert status == 400 and "score_missing" in answer["message"], answer
    assert get_json(f"{url}/health")["status"] == "ok"


def test_a_bad_request_is_a_400_that_says_why_and_is_counted(served):
    url = served.main_url
    errors_before = metric(url, "feedback_serving_errors_total", kind="bad_request")
    status, answer = post(f"{url}/predict", b"{not json")
    assert status == 400 and "not valid JSON" in answer["message"]
    status, answer = post(
        f"{url}/predict", {"dataframe_split": {"columns": ["momentum"], "data": [[1.0, 2.0]]}}
    )
    assert status == 400 and "columns" in answer["message"]
    status, answer = post(f"{url}/invocations", {"rows": [{"momentum": 1.0}]})
    assert status == 400 and "dataframe_split" in answer["message"]
    status, answer = post(f"{url}/predict", {"dataframe_records": [{"momentum": "high"}]})
    assert status == 400 and "'momentum' must hold numbers" in answer["message"]
    assert metric(url, "feedback_serving_errors_total", kind="bad_request") - errors_before == 4
    assert get_json(f"{url}/health")["status"] == "ok"  # still serving
    wait_until(lambda: logged(served.main_dir, status=400, count=4), 20, "400s", served.main)
    log = request_log(served.main_dir)
    assert (log.loc[log["status"] == 400, "rows"] == 0).all()


def test_alias_move_and_policy_publish_are_served_without_restart(served):
    url, registry = served.main_url, served.registry
    reloads_before = metric(url, "feedback_serving_reloads_total")
    current = registry.alias_version(CHAMPION)
    other = next(v for v in served.versions if v != current)
    registry.set_alias(CHAMPION, other)
    wait_until(
        lambda: get_json(f"{url}/health")["champion_version"] == other,
        30,
        f"the server to follow the alias to version {other}",
        served.main,
    )
    rows = pd.DataFrame({"momentum": np.linspace(-2, 2, 41), "rsi": 0.0, "gap": 0.0})
    status, answer = post(f"{url}/predict", {"dataframe_split": rows.to_dict("split")})
    assert status == 200, answer
    frame = served_frame(answer)
    assert (frame["model_version"] == other).all()
    expected = served.estimators[other].predict_proba(rows[FEATURES])[:, 1]
    np.testing.assert_allclose(frame["probability"], expected, rtol=1e-9)

    old_version = registry.active_policy_version()
    policy = ServingPolicy(version=old_version + 1, threshold=0.93)
    registry.publish_policy(policy)
    wait_until(
        lambda: get_json(f"{url}/health")["policy_version"] == policy.version,
        30,
        "the server to load the published policy",
        served.main,
    )
    status, answer = post(f"{url}/predict", {"dataframe_split": rows.to_dict("split")})
    frame = served_frame(answer)
    assert (frame["policy_version"] == policy.version).all()
    blended = frame["blended_confidence"]
    assert frame["decision"].tolist() == (blended >= 0.93).tolist()
    assert ((blended >= 0.5) & (blended < 0.93)).any()  # rows the old threshold accepted
    assert metric(url, "feedback_serving_reloads_total") - reloads_before >= 2
    assert metric(url, "feedback_serving_champion_version") == float(other)
    assert metric(url, "feedback_serving_policy_version") == float(policy.version)


def test_served_rows_land_at_sigterm_ingest_and_meet_their_feedback(served):
    url, data_dir = served.writeback_url, served.writeback_dir
    health = get_json(f"{url}/health")
    assert health["status"] == "degraded" and health["champion_version"] is None

    # No version holds the alias: every row is served its rule_confidence.
    degraded_rows = pd.DataFrame(
        {
            "momentum": [0.4, -0.7, 1.1],
            "rsi": [0.2, 0.3, -0.1],
            "gap": [0.0, 0.1, 0.2],
            "rule_confidence": [0.6, 0.3, 0.5],
            "prediction_id": ["deg-0", None, "deg-2"],
            "variant": ["A", "B", None],
        }
    )
    status, answer = post(
        f"{url}/predict", {"dataframe_records": json.loads(degraded_rows.to_json(orient="records"))}
    )
    assert status == 200, answer
    degraded = served_frame(answer)
    assert degraded["fallback"].all() and degraded["model_version"].isna().all()
    assert degraded["policy_version"].isna().all()
    assert degraded["blended_confidence"].tolist() == [0.6, 0.3, 0.5]
    assert degraded["decision"].tolist() == [True, False, True]

    # The alias appears: the same process scores with that version.
    version = served.versions[0]
    served.registry.set_alias(SHADOW, version)
    wait_until(
        lambda: get_json(f"{url}/health")["status"] == "ok",
        30,
        "the server to load the shadow alias",
        served.writeback,
    )
    scored_rows = scoring_rows().assign(
        entity_id=["MSFT", "AAPL", None, "TSLA", "AAPL"],
        ml_enhanced=[True, False, True, None, True],
        environment=["prod", None, None, None, "dev"],
    )
    unscorable = {"momentum": None, "rsi": 0.1, "gap": 0.2, "prediction_id": "no-confidence"}
    records = [*json.loads(scored_rows.to_json(orient="records")), unscorable]
    status, answer = post(f"{url}/predict", {"dataframe_records": records})
    assert status == 200, answer
    scored = served_frame(answer)
    assert (scored["model_version"] == version).all()
    assert scored["fallback"].tolist() == [False, False, False, False, True, True]
    assert pd.isna(scored.loc[5, "blended_confidence"])  # no score, no rule_confidence

    # Nothing is flushed before shutdown (600 s, 100,000 rows): SIGTERM must write it all.
    landing = data_dir / "landing" / "predictions"
    assert not landing.exists() or not list(landing.iterdir())
    served.writeback.stop()  # SIGTERM; uvicorn re-raises it after a graceful shutdown
    assert served.writeback.process.returncode in (0, -signal.SIGTERM), served.writeback.tail()
    assert "Application shutdown complete" in served.writeback.tail()

    assert list(landing.glob("served-*.jsonl")), "nothing was flushed at SIGTERM"
    served_rows = pd.concat([degraded, scored], ignore_index=True)
    written = served_rows[served_rows["blended_confidence"].notna()]
    landed = landed_records(data_dir).set_index("prediction_id")
    assert sorted(landed.index) == sorted(written["prediction_id"])
    assert "no-confidence" not in landed.index
    assert landed.loc["deg-0", "variant"] == "A" and landed.loc["deg-2", "environment"] == "dev"
    assert len(request_log(data_dir)) == 2

    con = warehouse.connect(data_dir / "warehouse.duckdb")
    try:
        results = ingest_kind(con, data_dir / "landing", "predictions")
        assert [r.status for r in results] == ["ingested"] * len(results), results
        assert sum(r.rejected for r in results) == 0 and sum(r.duplicates for r in results) == 0
        assert sum(r.accepted for r in results) == len(written)

        occurred = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        feedback = landing.parent / "feedback" / "served-feedback.jsonl"
        feedback.parent.mkdir(parents=True, exist_ok=True)
        feedback.write_text(
            "".join(
                json.dumps(
                    {
                        "event_id": f"accept-{pid}",
                        "prediction_id": pid,
                        "event_type": "accept",
                        "occurred_at": occurred,
                    }
                )
                + "\n"
                for pid in written["prediction_id"]
            )
        )
        results = ingest_kind(con, data_dir / "landing", "feedback")
        assert sum(r.rejected for r in results) == 0
        assert sum(r.accepted for r in results) == len(written)

        as_of = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)
        build_labeled_outcomes(con, LabelingSettings(environments=["prod", "dev"]), as_of)
        labeled = con.execute(
            f"SELECT prediction_id, model_version, label, confidence FROM {LABELED_OUTCOMES}"
        ).df()
    finally:
        con.close()
    labeled = labeled.set_index("prediction_id").loc[written["prediction_id"]]
    assert (labeled["label"] == 1).all()
    assert none_for_null(labeled["model_version"]) == none_for_null(written["model_version"])
    assert (labeled["model_version"] == version).sum() == 5  # the model served these
    np.testing.assert_allclose(labeled["confidence"], written["blended_confidence"], rtol=1e-12)
