"""What the hookstream distribution holds; everything else is in pyproject.toml.

The repository keeps the brief's layout (services/core, services/ingest, ...) and
the import name is ``hookstream``, mapped onto services/. setuptools cannot
discover packages under a renamed root by itself, so they are found here: a new
provider or sink folder is packaged without editing a list.
"""

from setuptools import find_packages, setup

SUBPACKAGES = find_packages("services")

setup(
    package_dir={"hookstream": "services", "hookstream.schemas": "schemas"},
    packages=["hookstream", *(f"hookstream.{name}" for name in SUBPACKAGES), "hookstream.schemas"],
    package_data={
        "hookstream.sinks.warehouse": ["migrations/*.sql"],
        # The event contracts: JSON Schemas and their examples (ADR 16).
        "hookstream.schemas": ["**/*.json"],
    },
)
