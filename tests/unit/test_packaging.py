"""The installed distribution is whole: every package folder, the schemas as package data
(found without HOOKSTREAM_SCHEMAS_DIR) and the warehouse migrations (issue 15, item 2).

A wheel is built from a copy of the tracked files (a stale build/ folder in the
checkout could otherwise hide a missing file), unpacked, and imported by a fresh
interpreter that sees the unpacked copy before the editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "services" / "sinks" / "warehouse" / "migrations"
SHIPPED = ("setup.py", "pyproject.toml", "README.md", "services", "schemas")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "--", *SHIPPED], cwd=REPO, check=True,
        capture_output=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(root / "wheel"), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = (root / "wheel").glob("hookstream-*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
        names = archive.namelist()
    return site, names


def test_every_package_folder_is_in_the_wheel(unpacked_wheel: tuple[Path, list[str]]) -> None:
    """setup.py finds the packages: a new provider or sink folder needs no list edit."""
    _, names = unpacked_wheel
    folders = sorted(p.parent.relative_to(REPO / "services").as_posix()
                     for p in (REPO / "services").rglob("__init__.py"))
    assert "providers/sarj" in folders and "sinks/warehouse" in folders
    for folder in folders:
        prefix = "hookstream/" if folder == "." else f"hookstream/{folder}/"
        assert f"{prefix}__init__.py" in names, folder


def test_every_schema_and_migration_ships(unpacked_wheel: tuple[Path, list[str]]) -> None:
    _, names = unpacked_wheel
    schemas = sorted(p.relative_to(REPO / "schemas").as_posix()
                     for p in (REPO / "schemas").rglob("*.json"))
    assert len(schemas) > 50
    for name in schemas:
        assert f"hookstream/schemas/{name}" in names, name
    migrations = sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    assert migrations
    for name in migrations:
        assert f"hookstream/sinks/warehouse/migrations/{name}" in names, name


def test_the_installed_package_finds_its_schemas_unconfigured(
        unpacked_wheel: tuple[Path, list[str]], tmp_path: Path) -> None:
    site, _ = unpacked_wheel
    probe = """
import json, hookstream
from hookstream.core.schemas import SCHEMAS_DIR, SchemaRegistry
from hookstream.sinks.warehouse.schema import MIGRATIONS
registry = SchemaRegistry()
print(json.dumps({"package": hookstream.__file__, "schemas": str(SCHEMAS_DIR),
                  "kinds": len(registry.kinds()),
                  "canonical": (SCHEMAS_DIR / "canonical/v1/event.schema.json").is_file(),
                  "migrations": sorted(p.name for p in MIGRATIONS.glob("*.sql"))}))
"""
    env = {k: v for k, v in os.environ.items() if k != "HOOKSTREAM_SCHEMAS_DIR"}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, check=True,
                         capture_output=True, text=True, timeout=60).stdout
    found = json.loads(out)
    assert Path(found["package"]).is_relative_to(site), found["package"]
    assert Path(found["schemas"]) == site / "hookstream" / "schemas"
    from hookstream.core.schemas import SchemaRegistry

    assert found["kinds"] == len(SchemaRegistry(REPO / "schemas").kinds()) > 20
    assert found["canonical"]
    assert found["migrations"] == sorted(p.name for p in MIGRATIONS.glob("*.sql"))
