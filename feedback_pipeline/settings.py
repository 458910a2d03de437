"""Pipeline settings: defaults in code, a per-deployment YAML file, per-run overrides.

DESIGN section 10. The YAML file is named by ``FEEDBACK_PIPELINE_SETTINGS``; unknown or invalid
fields fail fast with a message that names the field (``labeling.policy.win.strength: ...``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SETTINGS_ENV_VAR = "FEEDBACK_PIPELINE_SETTINGS"
DATA_DIR_ENV_VAR = "FEEDBACK_PIPELINE_DATA_DIR"

Environment = Literal["prod", "dev"]
LabelSource = Literal["outcome", "explicit", "implicit"]


class SettingsError(ValueError):
    """Raised for an invalid settings file or override; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelRule(_Strict):
    """How one kind of feedback signal turns into a label. ``label: null`` excludes the signal."""

    label: Literal[0, 1] | None
    strength: float = Field(ge=0.0, le=10.0)
    source: LabelSource


def _default_policy() -> dict[str, LabelRule]:
    return {
        "win": LabelRule(label=1, strength=1.0, source="outcome"),
        "loss": LabelRule(label=0, strength=1.0, source="outcome"),
        "breakeven": LabelRule(label=0, strength=0.5, source="outcome"),
        "reject": LabelRule(label=0, strength=1.0, source="explicit"),
        "undo": LabelRule(label=0, strength=1.5, source="explicit"),
        "accept": LabelRule(label=1, strength=0.5, source="implicit"),
        "export": LabelRule(label=1, strength=0.5, source="implicit"),
        "modify": LabelRule(label=1, strength=0.25, source="implicit"),
    }


# Signals a policy must cover: the three trade outcomes and the five human event types.
POLICY_SIGNALS = ("win", "loss", "breakeven", "reject", "undo", "accept", "export", "modify")


class LabelingSettings(_Strict):
    """DESIGN section 5: the label policy as data."""

    policy: dict[str, LabelRule] = Field(default_factory=_default_policy)
    environments: list[Environment] = Field(default_factory=lambda: ["prod"], min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _merge_policy_overrides(cls, data: Any) -> Any:
        """A settings file may override a few signals; the rest keep their defaults."""
        if isinstance(data, dict) and isinstance(data.get("policy"), dict):
            unknown = sorted(set(data["policy"]) - set(POLICY_SIGNALS))
            if unknown:
                raise ValueError(
                    f"policy: unknown signal(s) {unknown}; expected some of {list(POLICY_SIGNALS)}"
                )
            defaults = {k: v.model_dump() for k, v in _default_policy().items()}
            for signal, rule in data["policy"].items():
                if isinstance(rule, dict):
                    defaults[signal] = {**defaults[signal], **rule}
                else:
                    defaults[signal] = rule
            data = {**data, "policy": defaults}
        return data


Family = Literal["xgboost", "logistic_regression", "random_forest"]
FAMILIES: tuple[Family, ...] = ("xgboost", "logistic_regression", "random_forest")


class TrainingSettings(_Strict):
    """DESIGN section 6: how the blended training set is built and split."""

    outcome_weight: float = Field(default=2.0, ge=0.1, le=10.0)
    lookback_days: int = Field(default=90, ge=1, le=3650)
    use_outcomes: bool = Field(
        default=True, description="false = baseline rows only (the plain market-data retrain)"
    )
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    maturity_days: float = Field(
        default=10.0,
        ge=0.0,
        le=365.0,
        description="holdout rows are predictions at least this old, so outcomes had time to land",
    )
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)


def _default_hyperparameters() -> dict[str, dict[str, Any]]:
    return {
        "xgboost": {
            "n_estimators": 200,
            "max_depth": 4,
            "learning_rate": 0.1,
            "subsample": 0.9,
            "min_child_weight": 1.0,
        },
        "logistic_regression": {"C": 1.0},
        "random_forest": {"n_estimators": 200, "max_depth": 8, "min_samples_leaf": 5},
    }


class ModelSettings(_Strict):
    """DESIGN section 7: which families run and with what hyperparameters."""

    families: list[Family] = Field(default_factory=lambda: ["xgboost"], min_length=1)
    hyperparameters: dict[Family, dict[str, Any]] = Field(default_factory=_default_hyperparameters)
    seed: int = 42
    engine: Literal["local", "dask"] = Field(
        default="local", description="dask: XGBoost trains with xgboost.dask on a Dask cluster"
    )
    dask_scheduler: str | None = Field(
        default=None, description="Dask scheduler address; null = a local cluster of 2 workers"
    )
    search_budget: int = Field(
        default=4, ge=1, le=50, description="candidates per family in a full retrain's search"
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_hyperparameters(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("hyperparameters"), dict):
            merged = _default_hyperparameters()
            for family, params in data["hyperparameters"].items():
                if family in merged and isinstance(params, dict):
                    merged[family] = {**merged[family], **params}
                else:
                    merged[family] = params
            data = {**data, "hyperparameters": merged}
        return data


class GateSettings(_Strict):
    """DESIGN section 8: the promotion policy as data."""

    min_accuracy_gain: float = Field(default=0.02, ge=0.0, le=1.0)
    min_f1_gain: float = Field(default=0.03, ge=0.0, le=1.0)
    max_auc_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    min_holdout_rows: int = Field(default=200, ge=1)
    require_significance: bool = True
    cold_start_min_auc: float = Field(default=0.55, ge=0.0, le=1.0)
    bootstrap_samples: int = Field(default=500, ge=50, le=10000)
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="decision threshold")
    mode: Literal["enforce", "dry_run"] = "enforce"


class FullRetrainSettings(_Strict):
    """The monthly full retrain: every family, a wider window, a small search."""

    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    lookback_days: int = Field(default=365, ge=1, le=3650)


class TriggerSettings(_Strict):
    """DESIGN section 9: when retrains start by themselves."""

    weekly_cron: str = "0 3 * * 1"
    monthly_cron: str = "0 4 1 * *"
    new_labels_threshold: int = Field(default=500, ge=1)
    landing_interval_seconds: int = Field(default=60, ge=5)
    new_labels_interval_seconds: int = Field(default=300, ge=5)

    @model_validator(mode="after")
    def _valid_crons(self) -> TriggerSettings:
        for name in ("weekly_cron", "monthly_cron"):
            if len(getattr(self, name).split()) != 5:
                raise ValueError(f"{name}: expected a 5-field cron expression")
        return self


class Settings(_Strict):
    """Every tunable of the pipeline, with its default."""

    features: list[str] | None = Field(
        default=None, description="Feature names; null = the numeric features present in data."
    )
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    full_retrain: FullRetrainSettings = Field(default_factory=FullRetrainSettings)
    triggers: TriggerSettings = Field(default_factory=TriggerSettings)


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"Invalid settings in {origin}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def parse_settings(raw: dict[str, Any] | None, origin: str = "settings") -> Settings:
    """Validate a settings mapping; raise SettingsError naming each bad field."""
    try:
        return Settings.model_validate(raw or {})
    except ValidationError as error:
        raise SettingsError(_format_validation_error(error, origin)) from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load settings from ``path`` or ``$FEEDBACK_PIPELINE_SETTINGS``; defaults when neither."""
    path = path or os.environ.get(SETTINGS_ENV_VAR) or None
    if path is None:
        return Settings()
    file = Path(path)
    if not file.is_file():
        raise SettingsError(f"{SETTINGS_ENV_VAR}: settings file {file} does not exist")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SettingsError(f"Invalid settings in {file}: not valid YAML ({error})") from None
    if raw is not None and not isinstance(raw, dict):
        raise SettingsError(f"Invalid settings in {file}: top level must be a mapping")
    return parse_settings(raw, origin=str(file))


def with_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """Apply per-run overrides (a nested mapping, e.g. from Dagster run config) to settings."""
    merged = _deep_merge(settings.model_dump(), overrides)
    return parse_settings(merged, origin="run config")


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_as_of(value: str | None) -> datetime:
    """ISO-8601 (UTC when no zone) -> naive UTC datetime; None -> now."""
    if value is None:
        return datetime.now(UTC).replace(tzinfo=None)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"as_of: {value!r} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(UTC).replace(tzinfo=None)
    return parsed


def default_data_dir() -> Path:
    """``$FEEDBACK_PIPELINE_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV_VAR) or "data").resolve()
