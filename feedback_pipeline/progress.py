"""The progress callback every long step takes: one line of text at a time, printed by the CLI,
logged by a Dagster asset, or dropped (``quiet``) where a replay runs the step many times."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def quiet(message: str) -> None:
    """Progress that says nothing."""
