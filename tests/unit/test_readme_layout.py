"""The README's "What is here" table matches the tree (issue 15): every package of
services/ and every top-level folder has its row, and every row names a real path."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def table_paths() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## What is here", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, re.M)


def test_every_row_names_a_real_path() -> None:
    rows = table_paths()
    assert len(rows) >= 10
    for path in rows:
        assert (REPO / path).exists(), f"README's table names {path}, which is not in the tree"


def test_every_package_and_top_level_folder_has_a_row() -> None:
    rows = {path.rstrip("/") for path in table_paths()}
    packages = {f"services/{p.parent.name}" for p in (REPO / "services").glob("*/__init__.py")}
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.splitlines()
    folders = {name.split("/", 1)[0] for name in tracked
               if "/" in name and not name.startswith(".")} - {"services"}
    assert "services/providers" in packages and "tests" in folders
    missing = sorted((packages | folders) - rows)
    assert not missing, f"README's 'What is here' table has no row for {missing}"
