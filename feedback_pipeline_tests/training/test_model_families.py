"""A model family defined outside the package: one module registers it, one settings entry
selects it, and it trains, registers and predicts like the built-in ones (the steps in
docs/architecture.md, "Adding a model family")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.impute import SimpleImputer
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline

from feedback_pipeline.registry.mlflow_registry import local_registry
from feedback_pipeline.settings import load_settings
from feedback_pipeline.training.challengers import train_challengers
from feedback_pipeline.training.dataset import build_training_set, discover_features
from feedback_pipeline.training.families import FAMILIES, ModelFamily, register_family
from feedback_pipeline.training.splits import load_split
from feedback_pipeline.warehouse import connection as warehouse
from feedback_pipeline_tests.conftest import SIMULATED_AS_OF

built_with: list[dict[str, Any]] = []


def naive_bayes(params: dict[str, Any], seed: int) -> Pipeline:
    """The toy family: Gaussian naive Bayes after a median imputer."""
    built_with.append(params)
    return Pipeline(
        [
            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
            ("bayes", GaussianNB(**params)),
        ]
    )


@pytest.fixture
def toy_family():
    family = register_family(
        ModelFamily(
            "naive_bayes",
            naive_bayes,
            defaults={"var_smoothing": 1e-9},
            search_space={"var_smoothing": [1e-9, 1e-6]},
        )
    )
    built_with.clear()
    yield family
    del FAMILIES[family.name]


def settings_file(tmp_path, models: dict) -> Any:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return load_settings(path)


def test_a_family_defined_outside_the_package_trains_registers_and_predicts(
    toy_family, simulated_dir, tmp_path
):
    settings = settings_file(
        tmp_path,
        {"families": ["naive_bayes"], "hyperparameters": {"naive_bayes": {"var_smoothing": 1e-3}}},
    )
    registry = local_registry(simulated_dir)
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    try:
        features = discover_features(con, None)
        build_training_set(con, settings.training, features, SIMULATED_AS_OF)
        round_ = train_challengers(
            con, registry, settings, settings.models.families, search=False, tags={}
        )
        holdout = load_split(con, "holdout", features)
    finally:
        con.close()

    (challenger,) = round_.challengers
    assert challenger.family == "naive_bayes"
    assert registry.version_tags(challenger.version)["family"] == "naive_bayes"
    # the settings entry reached the estimator, over the family's default
    assert {"var_smoothing": 1e-3} in built_with
    assert all(params["var_smoothing"] == 1e-3 for params in built_with)
    p = registry.predict_probability(challenger.version, holdout.X).to_numpy()
    assert p.shape == (len(holdout),)
    assert np.all((p >= 0) & (p <= 1))
    assert len(np.unique(p)) > 10  # a fitted model, not a constant


def test_an_unregistered_family_names_the_setting(simulated_dir, tmp_path):
    settings = settings_file(tmp_path, {"families": ["naive_bayes"]})
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    try:
        with pytest.raises(ValueError, match="models.families: unknown family 'naive_bayes'"):
            train_challengers(
                con, local_registry(simulated_dir), settings, ["naive_bayes"], False, {}
            )
    finally:
        con.close()


def test_a_misspelled_family_in_hyperparameters_names_itself(simulated_dir, tmp_path):
    settings = settings_file(tmp_path, {"hyperparameters": {"xgbost": {"max_depth": 3}}})
    con = warehouse.connect(simulated_dir / "warehouse.duckdb")
    try:
        with pytest.raises(ValueError, match="models.hyperparameters.xgbost: no model family"):
            train_challengers(con, local_registry(simulated_dir), settings, ["xgboost"], False, {})
    finally:
        con.close()
