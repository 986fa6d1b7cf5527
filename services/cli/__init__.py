"""``hookstream``: the operator's command line (a developer's tool too; no deployable
imports it).

    hookstream stack up|down|status     the local Kafka + PostgreSQL (deploy/local/stack)
    hookstream topics                   create the documented topics
    hookstream send                     post the providers' sample deliveries, signed
    hookstream dlq list|show|redrive    inspect and re-submit dead letters
    hookstream replay --from 2h         re-run raw deliveries (hookstream-normalizer replay)
    hookstream backfill PROVIDER ID...  fetch calls from a provider's API onto the raw topic
    hookstream summary                  what is on each topic and in the warehouse
    hookstream load                     drive the pipeline with realistic generated traffic
    hookstream bench                    every benchmark beside its bare baseline
    hookstream faults [SCENARIO ...]    inject faults under load; one table of exact accounting

One module per command family (stack, send, load, dlq, summary, bench, crm, tools
for faults/replay/backfill) registers its commands; ``app`` builds the tree and runs it.
"""

from .app import build_parser, main
from .dlq import _redrive, printable
from .load import bucket_quantile
from .send import pick_sources, signed_request

__all__ = ["_redrive", "bucket_quantile", "build_parser", "main", "pick_sources", "printable",
           "signed_request"]
