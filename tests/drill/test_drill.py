"""Runs every conformance script in ``tests/drill/scripts`` (test id = script name).

Scripts named in ``KNOWN_FAILURES`` document a known core bug: they are expected to fail
(``xfail(strict=True)``), so a fix shows up as an XPASS failure until the entry goes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from drill import Drill

HERE = Path(__file__).parent
SCRIPTS = sorted((HERE / "scripts").glob("*.pkt"))


def load_known_failures(path: Path = HERE / "KNOWN_FAILURES") -> dict[str, str]:
    """``script name -> reason`` from lines ``name  # reason`` (``#`` lines are comments)."""
    known: dict[str, str] = {}
    if not path.exists():
        return known
    for raw in path.read_text().splitlines():
        name, _, reason = raw.partition("#")
        name = name.strip().removesuffix(".pkt")
        if name:
            known[name] = reason.strip() or "known core bug"
    return known


KNOWN_FAILURES = load_known_failures()


def _params() -> list[pytest.param]:
    params = []
    for script in SCRIPTS:
        marks = []
        if script.stem in KNOWN_FAILURES:
            reason = f"core bug: {KNOWN_FAILURES[script.stem]}"
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        params.append(pytest.param(script, id=script.stem, marks=marks))
    return params


@pytest.mark.parametrize("script", _params())
def test_script(script: Path) -> None:
    Drill().run_file(script)


def test_known_failures_name_existing_scripts() -> None:
    names = {s.stem for s in SCRIPTS}
    stale = sorted(set(KNOWN_FAILURES) - names)
    assert not stale, f"KNOWN_FAILURES lists scripts that do not exist: {stale}"


def test_every_script_cites_an_rfc() -> None:
    for script in SCRIPTS:
        first = script.read_text().lstrip().splitlines()[0]
        assert first.startswith("//") and "RFC" in first, (
            f"{script.name}: the first line must be a comment citing the RFC section it checks"
        )
