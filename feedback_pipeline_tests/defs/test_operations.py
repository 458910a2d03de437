"""Operating it for real: `dagster dev` (webserver + daemon) on a temp instance runs the sensors
that ingest new landing files and retrain on enough new labels; a GraphQL client launches
retrain_job; headless Chromium shows the asset graph and the MLflow registry.

Bounded waits throughout; every server listens on 127.0.0.1 and is stopped at the end."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from feedback_pipeline.defs.run_context import run_context_config
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.registry.model_registry import CHAMPION
from feedback_pipeline.simulator.feedback_stream import SimulationConfig, simulate
from feedback_pipeline_tests.conftest import with_mlflow_store
from feedback_pipeline_tests.servers import (
    BIN,
    project_env,
    start_on_free_port,
    wait_until,
    write_dagster_home,
)

pytestmark = pytest.mark.end_to_end

SCREENSHOTS = Path(__file__).resolve().parents[2] / "screenshots"


@pytest.fixture(scope="module")
def operating(tmp_path_factory):
    root = tmp_path_factory.mktemp("operations")
    home, data_dir = root / "dagster_home", root / "data"
    write_dagster_home(home)
    # Six weeks of feedback that ended two days ago: labels enough for the sensor to fire.
    start = date.today() - timedelta(days=44)
    simulate(
        data_dir / "landing",
        SimulationConfig(
            start=start,
            days=42,
            predictions_per_day=60,
            baseline_per_day=30,
            seed=7,
            bad_rate=0.0,
            human_accuracy=0.95,
        ),
    )
    with_mlflow_store(data_dir)  # the registry the runs will share, migrated once
    settings_file = root / "settings.yaml"
    settings_file.write_text(
        "triggers:\n  new_labels_threshold: 300\n  landing_interval_seconds: 5\n"
        "  new_labels_interval_seconds: 5\n"
    )
    env = project_env(home, data_dir, settings_file)
    # The MLflow UI the browser test reads starts meanwhile, on the same registry.
    background = ThreadPoolExecutor(max_workers=1)
    mlflow_ui = background.submit(
        start_on_free_port,
        lambda port: [
            *(str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{data_dir}/mlflow.db"),
            *("--default-artifact-root", str(data_dir / "mlartifacts")),
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        ],
        # MLflow's job runner (GenAI jobs, unused here) would start seven more processes.
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        root / "mlflow_ui.log",
        "/health",
    )
    server = None
    try:
        server, url = start_on_free_port(
            lambda port: [
                *(str(BIN / "dagster"), "dev", "-m", "feedback_pipeline.definitions"),
                *("-h", "127.0.0.1", "-p", str(port)),
            ],
            env,
            root / "dagster_dev.log",
            "/server_info",
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield {
                "port": int(url.rsplit(":", 1)[1]),
                "url": url,
                "home": home,
                "data_dir": data_dir,
                "server": server,
                "instance": instance,
                "env": env,
                "root": root,
                "mlflow_ui": mlflow_ui,
            }
    finally:
        # An idle `dagster dev` stops in about 3 s; one with a run in flight can take the whole
        # default grace, and nothing here is kept after the module.
        ui_stopped = background.submit(lambda: mlflow_ui.result()[0].stop())  # meanwhile
        try:
            if server is not None:
                server.stop(grace=10)
        finally:
            ui_stopped.result()
            background.shutdown()


def finished_runs(instance: dg.DagsterInstance, job: str, trigger: str) -> list[dg.DagsterRun]:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=job, tags={"trigger": trigger}))
    return [r for r in runs if r.is_finished]


def test_daemon_ingests_new_files_then_retrains_on_new_labels(operating):
    instance, server = operating["instance"], operating["server"]
    ingest = wait_until(
        lambda: finished_runs(instance, "ingest_job", "landing_files"),
        300,
        "an ingest run started by landing_files_sensor",
        server,
    )
    assert ingest[0].is_success, server.tail()
    retrain = wait_until(
        lambda: finished_runs(instance, "retrain_job", "new_labels"),
        420,
        "a retrain run started by new_labels_sensor",
        server,
    )
    run = retrain[0]
    assert run.is_success, server.tail()
    registry = local_registry(operating["data_dir"])
    champion = registry.alias_version(CHAMPION)
    assert champion is not None, "the sensor-triggered retrain moved the champion alias"
    assert registry.version_tags(champion)["dagster_run_id"] == run.run_id
    assert registry.version_tags(champion)["trigger"] == "new_labels"


def test_graphql_client_launches_retrain_job(operating):
    client = DagsterGraphQLClient("127.0.0.1", port_number=operating["port"])
    as_of = datetime.now(UTC).isoformat()
    run_id = client.submit_job_execution(
        "retrain_job", run_config=run_context_config(as_of), tags={"trigger": "graphql"}
    )

    errors: list[str] = []

    def finished():
        try:
            status = client.get_run_status(run_id)
        except DagsterGraphQLClientError as error:
            # A passing hiccup is retried; the same error twice is a real failure, not a wait.
            assert str(error) not in errors, f"the same GraphQL error twice: {error}"
            errors.append(str(error))
            return None
        return (
            status
            if status
            in (
                dg.DagsterRunStatus.SUCCESS,
                dg.DagsterRunStatus.FAILURE,
                dg.DagsterRunStatus.CANCELED,
            )
            else None
        )

    status = wait_until(finished, 420, "the GraphQL-launched retrain", operating["server"])
    assert status == dg.DagsterRunStatus.SUCCESS, operating["server"].tail()


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian chromium and chromium-driver are not installed (.ci/run installs them)",
)
def test_browser_shows_the_asset_graph_and_the_champion(operating):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    data_dir, root = operating["data_dir"], operating["root"]
    wait_until(
        lambda: local_registry(data_dir).alias_version(CHAMPION),
        420,
        "a champion",
        operating["server"],
    )
    _, mlflow_url = operating["mlflow_ui"].result()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={root / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    SCREENSHOTS.mkdir(exist_ok=True)
    try:
        driver.get(f"{operating['url']}/assets")
        assets = (
            "raw_predictions",
            "raw_feedback_events",
            "baseline_examples",
            "labeled_outcomes",
            "training_set",
            "challenger_models",
            "evaluation_report",
            "champion_model",
        )
        try:
            WebDriverWait(driver, 90).until(lambda d: all(a in d.page_source for a in assets))
        finally:
            driver.save_screenshot(str(SCREENSHOTS / "dagster_assets.png"))

        driver.get(f"{mlflow_url}/#/models/feedback_model")
        try:
            WebDriverWait(driver, 90).until(
                lambda d: "feedback_model" in d.page_source and "champion" in d.page_source
            )
        finally:
            driver.save_screenshot(str(SCREENSHOTS / "mlflow_feedback_model.png"))
    finally:
        driver.quit()
