"""The README's configuration and CLI reference is generated from the code and must not drift."""

from __future__ import annotations

from pathlib import Path

from service.reference import BEGIN, END, render


def test_readme_reference_matches_the_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    current = readme[readme.index(BEGIN) : readme.index(END) + len(END)]
    assert current == render(), "README reference is stale: run `python -m service.reference` and paste it"
