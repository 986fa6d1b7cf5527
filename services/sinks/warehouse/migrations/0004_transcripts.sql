-- Transcripts fetched by hookstream-sink-transcripts (docs/sinks-transcripts.md):
-- Saaya links its transcript (transcriptUrl) instead of sending it. Applied by
-- whichever of the warehouse, recordings and transcripts sinks starts first.

-- One row per call or session whose transcript is stored: the source of truth.
CREATE TABLE transcripts (
    call_key text PRIMARY KEY,              -- "<provider>:<call or session id>", as calls.call_key
    provider text NOT NULL,
    call_id text NOT NULL,                  -- the call's or session's id
    event_id uuid NOT NULL,                 -- the event that carried the URL
    document jsonb NOT NULL,                -- the body as fetched (a JSON object or array)
    turns jsonb,                            -- [{role, text}] read from it; null: shape unknown
    bytes integer NOT NULL,
    sha256 text NOT NULL,                   -- hex, of the fetched bytes
    content_type text,
    source_url_host text,                   -- where it was fetched from (never the query)
    stored_at timestamptz NOT NULL DEFAULT now()
);

-- calls.transcript holds the turns, as it does for providers that send them inline.
-- The warehouse recomputes a call's row from its events, and a Saaya event carries no
-- transcript, so each fold would write NULL over it: this trigger fills it in on every
-- insert and update of a row that has a transcript URL and no inline transcript.
--
-- Either order of arrival ends the same: the transcripts sink sets calls.transcript
-- when the row exists, this trigger when the row comes later. Both take the same
-- transaction-scoped advisory lock on the call key first, so that two transactions
-- committing at the same time cannot each miss the other's write: the second to
-- take the lock reads (in a statement that starts after the first committed) what
-- the first wrote.
CREATE FUNCTION calls_fill_transcript() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('hookstream-transcript:' || NEW.call_key, 0));
    NEW.transcript := (SELECT turns FROM transcripts WHERE call_key = NEW.call_key);
    RETURN NEW;
END
$$;

CREATE TRIGGER calls_fill_transcript BEFORE INSERT OR UPDATE ON calls
FOR EACH ROW WHEN (NEW.transcript IS NULL AND NEW.transcript_url IS NOT NULL)
EXECUTE FUNCTION calls_fill_transcript();
