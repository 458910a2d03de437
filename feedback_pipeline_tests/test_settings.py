"""Settings: defaults, a YAML file per deployment, per-run overrides, errors naming the field."""

from __future__ import annotations

import pytest

from feedback_pipeline.settings import (
    SETTINGS_ENV_VAR,
    Settings,
    SettingsError,
    load_settings,
    with_overrides,
)


def test_defaults_match_the_design():
    settings = Settings()
    assert settings.labeling.environments == ["prod"]
    assert settings.labeling.policy.undo.strength == 1.5
    assert settings.labeling.policy.modify.strength == 0.25
    assert settings.features is None


def test_yaml_file_from_env_var_overrides_only_what_it_names(tmp_path, monkeypatch):
    path = tmp_path / "settings.yaml"
    path.write_text(
        "labeling:\n  environments: [prod, dev]\n  policy:\n    breakeven:\n      label: null\n"
    )
    monkeypatch.setenv(SETTINGS_ENV_VAR, str(path))
    settings = load_settings()
    assert settings.labeling.environments == ["prod", "dev"]
    assert settings.labeling.policy.breakeven.label is None
    assert settings.labeling.policy.breakeven.strength == 0.5  # kept from the default
    assert settings.labeling.policy.win.label == 1


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("labeling:\n  environmentz: [prod]\n", "labeling.environmentz"),
        ("labeling:\n  environments: [staging]\n", "labeling.environments.0"),
        ("labeling:\n  environments: []\n", "labeling.environments"),
        ("labeling:\n  policy:\n    win:\n      strength: -1\n", "labeling.policy.win.strength"),
        ("labeling:\n  policy:\n    win:\n      label: 3\n", "labeling.policy.win.label"),
        ("labeling:\n  policy:\n    jackpot:\n      label: 1\n", "labeling.policy.jackpot"),
        # a real cron parser: five fields that are not a schedule are refused
        ("triggers:\n  weekly_cron: '0 3 * * 8'\n", "triggers.weekly_cron"),
        ("triggers:\n  monthly_cron: '61 4 1 * *'\n", "triggers.monthly_cron"),
        # hyperparameters are typed per family: a typo names the field
        (
            "models:\n  hyperparameters:\n    xgboost:\n      max_dept: 3\n",
            "models.hyperparameters.xgboost.max_dept",
        ),
        (
            "models:\n  hyperparameters:\n    random_forest:\n      n_estimators: 0\n",
            "models.hyperparameters.random_forest.n_estimators",
        ),
        ("featurez: [a]\n", "featurez"),
        ("- just a list\n", "top level must be a mapping"),
        ("labeling: [\n", "not valid YAML"),
    ],
)
def test_invalid_settings_fail_fast_naming_the_field(tmp_path, yaml_text, field):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml_text)
    with pytest.raises(SettingsError) as error:
        load_settings(path)
    assert field in str(error.value)
    assert str(path) in str(error.value)


def test_missing_settings_file_names_the_env_var(tmp_path):
    with pytest.raises(SettingsError, match=SETTINGS_ENV_VAR):
        load_settings(tmp_path / "nope.yaml")


def test_run_overrides_are_validated_too():
    settings = with_overrides(Settings(), {"labeling": {"environments": ["dev"]}})
    assert settings.labeling.environments == ["dev"]
    with pytest.raises(SettingsError, match="labeling.environments.0"):
        with_overrides(Settings(), {"labeling": {"environments": ["qa"]}})


def test_one_hyperparameter_overrides_only_itself():
    settings = with_overrides(
        Settings(), {"models": {"hyperparameters": {"xgboost": {"max_depth": 2}}}}
    )
    assert settings.models.hyperparameters.for_family("xgboost")["max_depth"] == 2
    assert settings.models.hyperparameters.for_family("xgboost")["n_estimators"] == 200
