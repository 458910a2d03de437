"""`engine: dask`: the XGBoost challenger trains with xgboost.dask on a real LocalCluster of
2 worker processes, and is logged and registered exactly like a local one."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from distributed import Client, LocalCluster

from feedback_pipeline.metrics import predict_probability
from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import Settings, parse_settings
from feedback_pipeline.training.challengers import train_challengers
from feedback_pipeline.training.dataset import build_training_set, discover_features, load_info
from feedback_pipeline.training.families import fit
from feedback_pipeline.training.splits import load_split
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local_cluster:
        yield local_cluster


@pytest.fixture
def sim_con(simulated_dir):
    connection = warehouse.connect(simulated_dir / "warehouse.duckdb")
    build_training_set(
        connection, Settings().training, discover_features(connection, None), SIMULATED_AS_OF
    )
    yield connection
    connection.close()


def test_dask_fit_predicts_what_the_local_fit_predicts(sim_con, cluster):
    """On the same rows, weights and hyperparameters the two fits are the same model, once the
    two legitimate sources of difference are taken out: row subsampling (each Dask worker draws
    its own rows: subsample is 1 here) and the quantile sketch (a distributed sketch may cut the
    bins elsewhere: the features are put on a 0.1 grid, fewer distinct values than max_bin's
    256, so both cut at every value). What is left is float32 arithmetic (gradient sums added
    in another order across the workers), hence the tolerance: 1e-5, about 100 float32 epsilons,
    while any difference in what was learned moves probabilities by far more (0.2 with the
    sketch alone)."""
    features = load_info(sim_con).features
    train, holdout = (load_split(sim_con, s, features) for s in ("train", "holdout"))
    train = replace(train, X=train.X.round(1))
    params = {**Settings().models.hyperparameters.for_family("xgboost"), "subsample": 1.0}
    assert len(np.unique(train.weight)) > 1  # the label policy's weights must reach the workers
    with Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        on_dask = fit("xgboost", params, train, 42, client)
    local = fit("xgboost", params, train, 42)
    assert type(on_dask) is type(local)
    p_dask = predict_probability(on_dask, holdout.X.round(1))
    p_local = predict_probability(local, holdout.X.round(1))
    assert np.ptp(p_local) > 0.5  # a model that spreads its probabilities, not a constant
    np.testing.assert_allclose(p_dask, p_local, rtol=0, atol=1e-5)


def test_engine_dask_registers_the_challenger_like_a_local_one(sim_con, simulated_dir, cluster):
    settings = parse_settings(
        {"models": {"engine": "dask", "dask_scheduler": cluster.scheduler_address}}
    )
    registry = local_registry(simulated_dir)
    messages = []
    (challenger,) = train_challengers(
        sim_con, registry, settings, ["xgboost"], False, {"trigger": "test"}, messages.append
    ).challengers
    assert any("on Dask" in m for m in messages)
    run = registry.client.get_run(challenger.run_id)
    assert run.data.params["engine"] == "dask"
    assert "validation_roc_auc" in run.data.metrics
    model = registry.load(challenger.version)
    holdout = load_split(sim_con, "holdout", load_info(sim_con).features)
    assert model.predict(holdout.X)["probability"].between(0, 1).all()
    assert registry.version_tags(challenger.version)["family"] == "xgboost"
