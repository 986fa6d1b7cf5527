"""hookstream: a queue-backed webhook ingestion pipeline.

The repository folder ``services/`` is installed as the ``hookstream`` package:
``services/core`` is the small shared library every service imports, the other
folders are thin deployables with their own console entry points.
"""

__version__ = "0.1.0"
