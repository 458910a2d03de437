"""Pipeline settings: defaults in code, a per-deployment YAML file, per-run overrides.

The YAML file is named by ``FEEDBACK_PIPELINE_SETTINGS``; unknown or invalid
fields fail fast with a message that names the field (``labeling.policy.win.strength: ...``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from feedback_pipeline.vocabulary import ENVIRONMENTS, LABEL_SOURCES, POLICY_SIGNALS

SETTINGS_ENV_VAR = "FEEDBACK_PIPELINE_SETTINGS"
DATA_DIR_ENV_VAR = "FEEDBACK_PIPELINE_DATA_DIR"

Environment = Literal[ENVIRONMENTS]
LabelSource = Literal[LABEL_SOURCES]


class SettingsError(ValueError):
    """Raised for an invalid settings file or override; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelRule(_Strict):
    """How one kind of feedback signal turns into a label. ``label: null`` excludes the signal."""

    label: Literal[0, 1] | None
    strength: float = Field(ge=0.0, le=10.0)
    source: LabelSource


class LabelPolicy(_Strict):
    """One rule per signal (a trade outcome or a human event type)."""

    win: LabelRule = LabelRule(label=1, strength=1.0, source="outcome")
    loss: LabelRule = LabelRule(label=0, strength=1.0, source="outcome")
    breakeven: LabelRule = LabelRule(label=0, strength=0.5, source="outcome")
    reject: LabelRule = LabelRule(label=0, strength=1.0, source="explicit")
    undo: LabelRule = LabelRule(label=0, strength=1.5, source="explicit")
    accept: LabelRule = LabelRule(label=1, strength=0.5, source="implicit")
    export: LabelRule = LabelRule(label=1, strength=0.5, source="implicit")
    modify: LabelRule = LabelRule(label=1, strength=0.25, source="implicit")
    rate_good: LabelRule = LabelRule(label=1, strength=0.75, source="explicit")
    rate_neutral: LabelRule = LabelRule(label=None, strength=0.0, source="explicit")
    rate_bad: LabelRule = LabelRule(label=0, strength=0.75, source="explicit")

    def rule(self, signal: str) -> LabelRule:
        return getattr(self, signal)


assert set(LabelPolicy.model_fields) == set(POLICY_SIGNALS), "policy must cover every signal"


class LabelingSettings(_Strict):
    """The label policy as data."""

    policy: LabelPolicy = Field(default_factory=LabelPolicy)
    environments: list[Environment] = Field(default_factory=lambda: ["prod"], min_length=1)
    rating_good_min: int = Field(default=4, ge=1, le=5, description="ratings >= this: rate_good")
    rating_bad_max: int = Field(default=2, ge=1, le=5, description="ratings <= this: rate_bad")

    @model_validator(mode="after")
    def _ratings_do_not_overlap(self) -> LabelingSettings:
        if self.rating_bad_max >= self.rating_good_min:
            raise ValueError(
                f"rating_bad_max ({self.rating_bad_max}) must be below rating_good_min "
                f"({self.rating_good_min})"
            )
        return self


# A model family by name: the built-in ones below, or any registered with
# ``feedback_pipeline.training.families.register_family`` (checked when a run trains).
Family = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
FAMILIES: tuple[str, ...] = ("xgboost", "logistic_regression", "random_forest")


HalfLife = Annotated[float, Field(gt=0.0, le=36500.0)]


class TrainingSettings(_Strict):
    """How the blended training set is built and split."""

    outcome_weight: float = Field(default=2.0, ge=0.1, le=10.0)
    lookback_days: int = Field(default=36500, ge=1, le=36500)
    use_outcomes: bool = Field(
        default=True, description="false = baseline rows only (the plain market-data retrain)"
    )
    holdout_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    maturity_days: float | None = Field(
        default=None,
        ge=0.0,
        le=365.0,
        description="override: a row's label is final once its prediction is this old; null = "
        "the observed label delay (maturity_quantile) of the slowest label source",
    )
    maturity_quantile: float = Field(
        default=0.95, gt=0.5, le=1.0, description="which quantile of the label delay is maturity"
    )
    validation_fraction: float = Field(default=0.2, gt=0.0, lt=0.9)
    half_life_days: list[HalfLife | None] = Field(
        default_factory=lambda: [None, 90.0, 365.0],
        min_length=1,
        description="recency: candidate half-lives in days of an exponential decay of sample "
        "weights with age (null = no decay), chosen on validation like a hyperparameter",
    )
    half_life_search: Literal["every_retrain", "full_retrain"] = Field(
        default="every_retrain",
        description="when the half-lives are searched: every_retrain (the default: it held a "
        "significant lead the cheaper rule lost in the backtests); full_retrain (the monthly "
        "full retrain and a cold start search them, a weekly retrain with a champion fits the "
        "champion's half-life only: one candidate fit instead of one per half-life)",
    )
    refit: bool = Field(
        default=True,
        description="promote a refit of the chosen candidate on every row whose label is final",
    )
    selection_rows: int | None = Field(
        default=100_000,
        ge=1000,
        description="candidate procedures are fit on a seeded random sample of at most this many "
        "train rows (null = all): the search's cost stops growing with the data, the refit "
        "still uses every final row",
    )


class XGBoostParams(_Strict):
    n_estimators: int = Field(default=200, ge=1, le=5000)
    max_depth: int = Field(default=4, ge=1, le=16)
    learning_rate: float = Field(default=0.1, gt=0.0, le=1.0)
    subsample: float = Field(default=0.9, gt=0.0, le=1.0)
    min_child_weight: float = Field(default=1.0, ge=0.0)


class LogisticRegressionParams(_Strict):
    C: float = Field(default=1.0, gt=0.0)


class RandomForestParams(_Strict):
    n_estimators: int = Field(default=200, ge=1, le=5000)
    max_depth: int | None = Field(default=8, ge=1)
    min_samples_leaf: int = Field(default=5, ge=1)


class Hyperparameters(_Strict):
    """Per family. The built-in families' are typed: a misspelled parameter names the field
    instead of reaching the estimator. A registered family's entry is a mapping of its
    parameters (over the family's own defaults), checked by its estimator when a run trains."""

    model_config = ConfigDict(extra="allow", frozen=True)

    xgboost: XGBoostParams = Field(default_factory=XGBoostParams)
    logistic_regression: LogisticRegressionParams = Field(default_factory=LogisticRegressionParams)
    random_forest: RandomForestParams = Field(default_factory=RandomForestParams)

    @model_validator(mode="after")
    def _registered_entries_are_mappings(self) -> Hyperparameters:
        for name, params in (self.model_extra or {}).items():
            if not isinstance(params, dict):
                raise ValueError(f"{name}: a mapping of hyperparameter names to values")
        return self

    def for_family(self, family: str) -> dict[str, Any]:
        if family in FAMILIES:
            return getattr(self, family).model_dump()
        return dict((self.model_extra or {}).get(family, {}))

    def extra_families(self) -> list[str]:
        """The families other than the built-in ones that this file sets parameters for."""
        return sorted(self.model_extra or {})


class ModelSettings(_Strict):
    """Which families run and with what hyperparameters."""

    families: list[Family] = Field(default_factory=lambda: ["xgboost"], min_length=1)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
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


class GateSettings(_Strict):
    """The promotion policy as data."""

    rule: Literal["superiority", "non_inferiority", "log_loss"] = Field(
        default="log_loss",
        description="how the challenger's procedure is judged against the champion's, like with "
        "like on the holdout. log_loss: the challenger's wins when its holdout log loss is no "
        "higher; non_inferiority: it wins unless significantly worse (the accuracy delta's upper "
        "bound below -non_inferiority_margin); superiority: the incumbent rule (a met, "
        "significant gain decides)",
    )
    refresh_champion: bool = Field(
        default=True,
        description="when the champion's procedure wins, its refit on the fresh data becomes "
        "champion (the model keeps learning); false keeps the old champion model as it is",
    )
    quarantine_labels: bool = Field(
        default=True,
        description="audit the labels the champion never trained on, week by week: a week it "
        "ranks significantly backwards (a flipped label feed) blocks this promotion and is left "
        "out of every later training set",
    )
    quarantine_max_p: float = Field(
        default=0.001,
        gt=0.0,
        lt=0.5,
        description="one-sided Mann-Whitney p-value below which a week's labels contradict the "
        "champion",
    )
    quarantine_min_rows: int = Field(
        default=100, ge=10, description="labels a week needs before it can be quarantined"
    )
    quarantine_max_weeks: int = Field(
        default=1,
        ge=1,
        le=52,
        description="a contradiction confined to this many consecutive weeks is a broken feed; "
        "one that lasts longer is the world changing (a concept that reversed): its weeks are "
        "released and trained on",
    )
    non_inferiority_margin: float = Field(default=0.01, ge=0.0, le=1.0)
    min_accuracy_gain: float = Field(default=0.02, ge=0.0, le=1.0)
    min_f1_gain: float = Field(default=0.03, ge=0.0, le=1.0)
    max_auc_drop: float = Field(default=0.01, ge=0.0, le=1.0)
    min_holdout_rows: int = Field(default=200, ge=1)
    require_significance: bool = True
    cold_start_min_auc: float = Field(default=0.55, ge=0.0, le=1.0)
    bootstrap_samples: int = Field(default=500, ge=50, le=10000)
    confidence_level: float = Field(default=0.95, gt=0.5, lt=1.0)
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0, description="decision threshold")
    mode: Literal["enforce", "dry_run", "always"] = Field(
        default="enforce",
        description="enforce; dry_run: decide and report, move nothing; always: gate off, "
        "promote every candidate (the backtest's retrain-always baseline)",
    )
    small_fair_holdout: Literal["block", "judge_alone"] = Field(
        default="judge_alone",
        description="when fewer than min_holdout_rows holdout rows are newer than the champion's "
        "data watermark (rows it never trained on): block promotion, or judge the challenger "
        "alone by the cold-start rule on its whole holdout",
    )


class FullRetrainSettings(_Strict):
    """The monthly full retrain: every family, a wider window, a small search."""

    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    lookback_days: int = Field(default=36500, ge=1, le=36500)


class TriggerSettings(_Strict):
    """When retrains start by themselves."""

    weekly_cron: str = "0 3 * * 1"
    monthly_cron: str = "0 4 1 * *"
    analytics_cron: str = Field(
        default="0 5 * * *", description="feedback stats, A/B comparison and serving policy"
    )
    monitoring_cron: str = Field(
        default="30 5 * * *", description="feature drift, live performance, serving health"
    )
    new_labels_threshold: int = Field(default=500, ge=1)
    landing_interval_seconds: int = Field(default=60, ge=5)
    new_labels_interval_seconds: int = Field(default=300, ge=5)
    failure_interval_seconds: int = Field(default=30, ge=5, description="failure sensor interval")

    @field_validator("weekly_cron", "monthly_cron", "analytics_cron", "monitoring_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid 5-field cron expression")
        return value


ABMetric = Literal["accept_rate", "fp_rate", "win_rate", "mean_return", "mean_rating"]
AB_METRICS: tuple[ABMetric, ...] = (
    "accept_rate",
    "fp_rate",
    "win_rate",
    "mean_return",
    "mean_rating",
)
SEGMENT_FIELDS = ("variant", "model_version", "entity_id", "environment", "ml_enhanced", "source")


class AnalyticsSettings(_Strict):
    """Feedback statistics and A/B comparisons."""

    since_days: int = Field(default=90, ge=1, le=36500, description="how far back stats look")
    segments: list[Literal[SEGMENT_FIELDS]] = Field(
        default_factory=lambda: list(SEGMENT_FIELDS),
        description="categorical fields whose values get an effectiveness row (good-label rate)",
    )
    top_terms: int = Field(default=10, ge=1, le=100, description="note terms per side")
    min_term_count: int = Field(default=3, ge=1, description="rarer note terms are not ranked")
    ab_by: Literal["variant", "model_version"] = "variant"
    ab_control: str = "A"
    ab_treatment: str = "B"
    ab_metrics: list[ABMetric] = Field(default_factory=lambda: list(AB_METRICS), min_length=1)
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    power: float = Field(default=0.8, gt=0.5, lt=1.0)
    min_rate_difference: float = Field(
        default=0.05, gt=0.0, lt=1.0, description="smallest rate difference worth detecting"
    )
    min_cohens_d: float = Field(
        default=0.2, gt=0.0, le=5.0, description="smallest mean difference worth detecting, in SDs"
    )


class PolicyMinimums(_Strict):
    """Matured labels a serving-policy stage needs in the rows it is fitted on."""

    threshold: int = Field(default=10, ge=2)
    rule_weights: int = Field(default=50, ge=2)
    sigmoid: int = Field(default=30, ge=2, description="recalibration below isotonic's minimum")
    isotonic: int = Field(default=200, ge=2)
    blend: int = Field(default=20, ge=1, description="outcomes per group (ML-enhanced, rule-only)")


class ServingSettings(_Strict):
    """How the serving policy is learned from feedback and applied."""

    mode: Literal["dry_run", "apply"] = Field(
        default="dry_run",
        description="dry_run: propose and report, serve nothing new; apply: serve the proposal "
        "when it beats the active policy on held-out rows (`policy apply` does it on request)",
    )
    min_labels: PolicyMinimums = Field(default_factory=PolicyMinimums)
    lookback_days: int = Field(default=90, ge=1, le=36500)
    tp_retention: float = Field(default=0.95, gt=0.0, le=1.0)
    blend_step: float = Field(default=0.1, gt=0.0, le=0.5)
    blend_min: float = Field(default=0.1, ge=0.0, le=1.0)
    blend_max: float = Field(default=0.7, ge=0.0, le=1.0)
    blend_margin: float = Field(
        default=0.05, ge=0.0, le=1.0, description="win-rate gap (ML-enhanced vs rule-only)"
    )


class MonitoringSettings(_Strict):
    """Drift, live performance and serving health, and when they retrain."""

    reference_days: int = Field(
        default=28, ge=1, le=3650,
        description="the drift reference: the last days of the champion's training window",
    )  # fmt: skip
    recent_days: int = Field(default=7, ge=1, le=365, description="the monitoring assets' window")
    window_days: int = Field(default=1, ge=1, le=90, description="one window of the sensor")
    windows: int = Field(default=3, ge=1, le=60, description="n: the sensor's last n windows")
    windows_required: int = Field(default=2, ge=1, description="k of those n must degrade")
    min_window_rows: int = Field(default=100, ge=10, description="fewer rows: not judged")
    psi_threshold: float = Field(default=0.2, gt=0.0, description="PSI above this is drift")
    ks_threshold: float = Field(default=0.1, gt=0.0, lt=1.0, description="reported beside PSI")
    bins: int = Field(default=10, ge=2, le=100, description="reference quantile bins for PSI")
    accuracy_drop: float = Field(
        default=0.05, gt=0.0, lt=1.0,
        description="live accuracy this far below the reference period's is degradation",
    )  # fmt: skip
    min_labeled_rows: int = Field(default=50, ge=10, description="labels a window needs")
    alpha: float = Field(
        default=0.01, gt=0.0, lt=0.5, description="an accuracy drop must be this significant"
    )
    sla_mean_latency_ms: float = Field(default=75.0, gt=0.0)
    sla_fallback_rate: float = Field(default=0.10, ge=0.0, le=1.0)
    sensor_interval_seconds: int = Field(default=300, ge=5)

    @model_validator(mode="after")
    def _k_of_n(self) -> MonitoringSettings:
        if self.windows_required > self.windows:
            raise ValueError(
                f"windows_required ({self.windows_required}) cannot exceed windows ({self.windows})"
            )
        return self


class MlflowSettings(_Strict):
    """How long our commands wait for MLflow before saying it is down. MLflow's own defaults
    (7 retries, 120 s timeout) hang for about 4 minutes on an unreachable server; these fail
    in seconds. MLflow's own variables (``MLFLOW_HTTP_REQUEST_*``), when set, win."""

    http_timeout_seconds: int = Field(
        default=5, ge=1, le=600, description="one request's socket timeout"
    )
    http_max_retries: int = Field(default=2, ge=0, le=10, description="retries per request")
    http_backoff_factor: int = Field(
        default=1, ge=0, le=120, description="seconds, doubled per retry (plus up to 1 s jitter)"
    )


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
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"Invalid settings in {origin}:"]
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"  {field}: {item['msg']}")
    return "\n".join(lines)


def parse_settings(raw: dict[str, Any] | None, origin: str = "settings") -> Settings:
    """Validate a (partial) settings mapping over the defaults; raise SettingsError naming each
    bad field. A file or run may set one field deep inside a section and keep the rest."""
    try:
        return Settings.model_validate(deep_merge(Settings().model_dump(), raw or {}))
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
    return parse_settings(deep_merge(settings.model_dump(), overrides), origin="run config")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, recursively for nested mappings; neither is modified."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
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
