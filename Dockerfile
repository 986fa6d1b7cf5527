# One image for every hookstream process; the command picks the service:
#
#   docker run hookstream:local                              # hookstream-ingest (the default)
#   docker run hookstream:local hookstream-normalizer
#   docker run hookstream:local hookstream-sink-warehouse    # -sink-alerts, -sink-crm, -sink-recordings, -sink-transcripts
#   docker run hookstream:local hookstream-sink-warehouse migrate
#   docker run hookstream:local hookstream topics
#
# Build from the repository root: docker build -t hookstream:local .
# Deploying it: docs/operations.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Every dependency ships manylinux wheels for CPython 3.11 (uvloop, httptools,
# orjson, asyncpg, aiokafka): no compiler needed.
COPY setup.py pyproject.toml README.md ./
COPY services ./services
COPY schemas ./schemas
# The JSON Schemas (hookstream.schemas) and the warehouse's SQL migrations are
# package data (setup.py): fail the build if the installed package, unconfigured,
# cannot find them.
RUN python -m venv /opt/hookstream \
 && /opt/hookstream/bin/pip install . \
 && /opt/hookstream/bin/python -c 'from hookstream.sinks.warehouse.schema import MIGRATIONS as m; assert sorted(m.glob("*.sql")), m' \
 && /opt/hookstream/bin/python -c 'from hookstream.core.schemas import SchemaRegistry as r; assert r().kinds()'

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="hookstream" \
      org.opencontainers.image.description="Queue-backed webhook ingestion pipeline: ingest, normalizer and sinks in one image"

# /var/lib/hookstream/recordings: the recordings sink's local store, and
# /var/spool/hookstream: ingest's local spool (HOOKSTREAM_INGEST_SPOOL_DIR, ADR 7);
# both volumes, owned by the service user so a fresh volume inherits it.
RUN groupadd --system --gid 10001 hookstream \
 && useradd --system --uid 10001 --gid hookstream --no-create-home \
            --home-dir /nonexistent --shell /usr/sbin/nologin hookstream \
 && mkdir -p /var/lib/hookstream/recordings /var/spool/hookstream \
 && chown -R hookstream:hookstream /var/lib/hookstream /var/spool/hookstream

COPY --from=build /opt/hookstream /opt/hookstream

# Containers listen on every interface; the services' own defaults (127.0.0.1) are
# for a developer machine. Config files are mounted at /etc/hookstream (compose: a
# bind mount, Kubernetes: the hookstream-files ConfigMap).
ENV PATH=/opt/hookstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOOKSTREAM_SOURCES_FILE=/etc/hookstream/sources.toml \
    HOOKSTREAM_ALERT_RULES_FILE=/etc/hookstream/alerts.toml \
    HOOKSTREAM_RECORDINGS_DIR=/var/lib/hookstream/recordings \
    HOOKSTREAM_INGEST_HOST=0.0.0.0 \
    HOOKSTREAM_INGEST_ADMIN_HOST=0.0.0.0 \
    HOOKSTREAM_NORMALIZER_HTTP_HOST=0.0.0.0 \
    HOOKSTREAM_SINK_HTTP_HOST=0.0.0.0

# Every console script must start (--help loads each service's modules).
RUN for cmd in hookstream hookstream-ingest hookstream-normalizer hookstream-sink-warehouse \
               hookstream-sink-alerts hookstream-sink-crm hookstream-sink-recordings \
               hookstream-sink-transcripts; do \
        "$cmd" --help >/dev/null || exit 1; \
    done

USER 10001:10001
WORKDIR /tmp

# ingest 8080 (webhooks); /healthz, /readyz, /metrics: ingest 8079 (its admin port),
# normalizer 8081, sinks 8092 (warehouse), 8093 (alerts), 8094 (crm), 8095 (recordings),
# 8096 (transcripts).
EXPOSE 8080 8079 8081 8092 8093 8094 8095 8096

# No entrypoint wrapper: the command is the service, and it runs as PID 1 so it
# receives SIGTERM directly (each service drains, commits and exits on it).
ENTRYPOINT []
CMD ["hookstream-ingest"]
