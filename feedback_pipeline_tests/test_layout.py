"""The layout stays one a newcomer can read: no module of the package over 500 lines, and no
docstring or comment that sends the reader to a file the repository does not have."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "feedback_pipeline"
REPO = PACKAGE.parent
MAX_LINES = 500


def test_no_module_is_over_500_lines():
    long = {
        str(path.relative_to(REPO)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these (at most {MAX_LINES} lines each): {long}"


def test_the_documents_the_code_names_exist():
    named = {
        (str(path.relative_to(REPO)), name)
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"\b(?:docs/[\w./-]+\.md|[A-Z][A-Z_]+\.md)\b", path.read_text())
        + ["DESIGN.md"] * bool(re.search(r"\bDESIGN\b", path.read_text()))
    }
    missing = {
        (source, name)
        for source, name in named
        if not (REPO / name).exists() and not list(REPO.glob(f"**/{name}"))
    }
    assert not missing, f"these files point at documents that are not in the repository: {missing}"
