"""Pipeline settings: defaults in code, a per-deployment YAML file, per-run overrides.

DESIGN section 10. The YAML file is named by ``FEEDBACK_PIPELINE_SETTINGS``; unknown or invalid
fields fail fast with a message that names the field (``labeling.policy.win.strength: ...``).
"""

from __future__ import annotations

import os
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


class Settings(_Strict):
    """Every tunable of the pipeline, with its default."""

    features: list[str] | None = Field(
        default=None, description="Feature names; null = the numeric features present in data."
    )
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)


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


def default_data_dir() -> Path:
    """``$FEEDBACK_PIPELINE_DATA_DIR``, else ``./data``."""
    return Path(os.environ.get(DATA_DIR_ENV_VAR) or "data").resolve()
