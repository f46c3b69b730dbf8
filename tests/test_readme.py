"""The README's state diagrams are the ones the transition tables generate."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- diagram:start -->", "<!-- diagram:end -->"


def embed() -> str:
    from walswitch.diagram import render
    text = (ROOT / "README.md").read_text()
    head, rest = text.split(START, 1)
    _old, tail = rest.split(END, 1)
    return head + START + "\n" + render() + END + tail


@pytest.mark.timeout(30)
def test_readme_diagrams_match_transition_tables():
    text = (ROOT / "README.md").read_text()
    assert text == embed(), "README diagrams are stale: run `python -m tests.test_readme` to regenerate"


if __name__ == "__main__":
    (ROOT / "README.md").write_text(embed())
