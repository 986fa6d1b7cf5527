-- Recordings fetched by hookstream-sink-recordings (docs/sinks-recordings.md).
-- Applied by whichever of the warehouse and recordings sinks starts first.

-- One row per call whose recording is stored: the source of truth for where it is.
CREATE TABLE recordings (
    call_key text PRIMARY KEY,              -- "<provider>:<call id>", as calls.call_key
    provider text NOT NULL,
    call_id text NOT NULL,
    event_id uuid NOT NULL,                 -- the call.ended event that carried the URL
    location text NOT NULL,                 -- file:///... or s3://bucket/key
    bytes bigint NOT NULL,
    sha256 text NOT NULL,                   -- hex, of the stored bytes
    content_type text,
    source_url_host text,                   -- where it was fetched from (never the signed URL)
    stored_at timestamptz NOT NULL DEFAULT now()
);

-- A convenience copy on the call's row. The recordings sink sets it when the row
-- exists; when the recording is stored before the warehouse has the call, this
-- trigger copies the location when the row is inserted. (Two commits racing can
-- still leave it empty: join recordings on call_key for the authoritative answer.)
ALTER TABLE calls ADD COLUMN recording_location text;

CREATE FUNCTION calls_fill_recording_location() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.recording_location IS NULL THEN
        NEW.recording_location := (SELECT location FROM recordings
                                   WHERE call_key = NEW.call_key);
    END IF;
    RETURN NEW;
END
$$;

-- Only rows that carry a recording URL (Sarj.ai call.ended) pay for the lookup.
CREATE TRIGGER calls_fill_recording_location BEFORE INSERT ON calls
FOR EACH ROW WHEN (NEW.recording_url IS NOT NULL)
EXECUTE FUNCTION calls_fill_recording_location();
