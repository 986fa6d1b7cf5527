-- The warehouse, version 1. Tables live in the schema named by
-- HOOKSTREAM_WAREHOUSE_SCHEMA (the connection's search_path); see docs/warehouse.md.

-- The authority for "one row per event": every event id ever written.
-- (events is partitioned by month, and a unique constraint on a partitioned
-- table must include the partition key, which differs between redeliveries.)
CREATE TABLE event_ids (
    event_id uuid PRIMARY KEY,
    received_at timestamptz NOT NULL
);

-- Append-only: one row per canonical event, the whole event as JSONB.
CREATE TABLE events (
    event_id uuid NOT NULL,
    received_at timestamptz NOT NULL,
    occurred_at timestamptz,
    provider text NOT NULL,
    source text NOT NULL,
    type text NOT NULL,
    provider_type text NOT NULL,
    call_id text,
    session_id text,
    agent_id text,
    campaign_id text,
    event jsonb NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (received_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE INDEX events_type_received ON events (type, received_at);
CREATE INDEX events_call ON events (call_id) WHERE call_id IS NOT NULL;
CREATE INDEX events_session ON events (session_id) WHERE session_id IS NOT NULL;

-- One row per call (Sawt, Sarj.ai) or session (Saaya): its current state.
-- state_rank/state_at/state_event_id order the lifecycle: a row only moves forward.
CREATE TABLE calls (
    call_key text PRIMARY KEY,              -- "<provider>:<call or session id>"
    provider text NOT NULL,
    source text NOT NULL,
    call_id text,
    session_id text,
    agent_id text,
    campaign_id text,
    status text,
    last_event_type text,
    state_rank int NOT NULL,
    state_at timestamptz NOT NULL,
    state_event_id uuid NOT NULL,
    direction text,
    customer_number text,
    started_at timestamptz,
    ended_at timestamptz,
    duration_s double precision,
    cost double precision,
    cost_currency text,
    sentiment double precision,
    sentiment_label text,
    summary text,
    outcome text,
    transcript jsonb,
    transcript_url text,
    recording_url text,
    first_event_at timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX calls_agent ON calls (agent_id);
CREATE INDEX calls_ended ON calls (ended_at);

-- Analysts' views.
CREATE VIEW tool_failures AS
SELECT event_id, received_at, occurred_at, provider, source, provider_type,
       call_id, session_id, agent_id,
       event->>'tool_name' AS tool_name,
       event->>'error_code' AS error_code,
       event->>'error_message' AS error_message
FROM events WHERE type = 'tool.failed';

CREATE VIEW campaigns AS
SELECT DISTINCT ON (campaign_id)
       campaign_id, provider, source, agent_id,
       type AS last_event_type,
       CASE type WHEN 'campaign.created' THEN 'created' WHEN 'campaign.started' THEN 'running'
                 WHEN 'campaign.paused' THEN 'paused' WHEN 'campaign.completed' THEN 'completed'
       END AS status,
       event->>'reason' AS last_pause_reason,
       coalesce(occurred_at, received_at) AS status_at
FROM events
WHERE campaign_id IS NOT NULL AND type <> 'campaign.row.completed'
ORDER BY campaign_id, coalesce(occurred_at, received_at) DESC, event_id DESC;

CREATE VIEW campaign_rows AS
SELECT event_id, campaign_id, session_id, agent_id, occurred_at,
       event->'data'->'data'->>'rowId' AS row_id,
       event->>'outcome' AS outcome,
       (event->>'duration_s')::double precision AS duration_s
FROM events WHERE type = 'campaign.row.completed';

CREATE VIEW agents AS
SELECT DISTINCT ON (agent_id)
       agent_id, provider, source, type AS last_event_type,
       event->'data'->'data'->>'versionId' AS version_id,
       coalesce(occurred_at, received_at) AS changed_at
FROM events
WHERE type IN ('agent.created', 'agent.updated', 'agent.published', 'agent.rolled_back')
ORDER BY agent_id, coalesce(occurred_at, received_at) DESC, event_id DESC;
