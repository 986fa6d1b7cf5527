"""The event contracts (JSON Schemas), shipped as package data: ``hookstream.schemas``.

The schema files live here, at the repository's top level, for the analytics
teams who build on them; the package maps this folder to ``hookstream.schemas``
(setup.py) so an installed hookstream finds them without configuration
(``hookstream.core.schemas.SCHEMAS_DIR``). Nothing here is code the services run.
"""
