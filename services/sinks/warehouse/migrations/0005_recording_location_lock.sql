-- calls.recording_location without the race 0002_recordings.sql left open: a call's
-- row and its recording committing at the same time could each miss the other's
-- write, leaving the location empty (seen in `hookstream faults kill-recordings`:
-- 2 calls of 43). As 0004_transcripts.sql does for transcripts, the insert trigger
-- and the recordings sink now both take one transaction-scoped advisory lock on the
-- call key first: the second to take it reads (in a statement that starts after the
-- first committed) what the first wrote. The recordings sink takes it in
-- services/sinks/recordings/index.py (fetching.index.call_lock("recording")).
CREATE OR REPLACE FUNCTION calls_fill_recording_location() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF NEW.recording_location IS NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('hookstream-recording:' || NEW.call_key, 0));
        NEW.recording_location := (SELECT location FROM recordings
                                   WHERE call_key = NEW.call_key);
    END IF;
    RETURN NEW;
END
$$;
