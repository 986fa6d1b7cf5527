"""The README's configuration reference is the one the code generates."""

from __future__ import annotations

from hookstream.devtools import reference
from tests.support import REPO


def test_readme_embeds_the_generated_reference() -> None:
    readme = (REPO / "README.md").read_text()
    assert reference.START in readme and reference.END in readme
    embedded = readme.split(reference.START, 1)[1].split(reference.END, 1)[0]
    assert embedded.strip() == reference.render().strip(), (
        "README's configuration reference is stale: "
        "python -m hookstream.devtools.reference, and paste it between the markers")


def test_every_variable_is_documented_once() -> None:
    text = reference.render()
    rows = [line for line in text.splitlines() if line.startswith("| `HOOKSTREAM")]
    names = [row.split("`")[1] for row in rows]
    assert len(names) == len(set(names)), "a variable appears in two sections"
    assert all(row.rstrip(" |").split("|")[-1].strip() for row in rows), "a variable lacks a doc"
