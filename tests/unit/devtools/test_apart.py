"""No deployable loads the developer tools: the console scripts other than ``hookstream``
(ingest, normalizer, the sink workers) import neither ``hookstream.devtools`` (samples,
load generator, catalog and reference generators) nor ``hookstream.cli`` (ADR 15).

Each entry point's module is imported in a fresh interpreter, and what ``sys.modules``
holds afterwards is everything it loads at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
DEPLOYABLES = sorted(target.split(":")[0] for name, target in SCRIPTS.items()
                     if name != "hookstream")
TOOLS = ("hookstream.devtools", "hookstream.cli")

PROGRAM = """
import importlib, sys
importlib.import_module(sys.argv[1])
print("\\n".join(sorted(sys.modules)))
"""


def loaded(module: str) -> set[str]:
    """Every module loaded by importing ``module`` in a new interpreter, with this
    process's import path (so the same ``hookstream`` is imported)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", PROGRAM, module], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    return set(result.stdout.split())


def tools_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == t or m.startswith(f"{t}.") for t in TOOLS))


def test_every_deployable_is_checked() -> None:
    assert len(DEPLOYABLES) == len(SCRIPTS) - 1 >= 7, SCRIPTS


@pytest.mark.parametrize("module", DEPLOYABLES)
def test_deployable_imports_no_tools(module: str) -> None:
    modules = loaded(module)
    assert module in modules
    assert tools_in(modules) == [], f"{module} loads developer tools"


def test_the_check_sees_tools() -> None:
    """The operator's CLI does load them, so the check above would notice."""
    assert "hookstream.devtools.samples" in tools_in(loaded("hookstream.cli"))
