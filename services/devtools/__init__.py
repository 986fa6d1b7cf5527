"""Developer tools: what builds, loads and documents the pipeline, never part of it.

    samples     the providers' sample deliveries (schemas/providers/*/examples)
    loadgen     a realistic generated load of every provider (``hookstream load``, faults)
    catalog     docs/catalog.md and schemas/canonical/v1/examples/ from the schemas
    reference   the README's configuration reference from the settings classes
    faults      ``hookstream faults``: the fault suite, a pipeline of its own under load

No deployable (the console scripts other than ``hookstream``) imports this package;
tests/unit/devtools/test_apart.py checks that.
"""
