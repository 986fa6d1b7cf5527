-- Test deliveries (issue 13; docs/warehouse.md): kept in events, flagged, so that
-- setting up an integration is visible; never folded into calls. Events stored
-- before this column existed were real ones (a canonical event without `test`).
ALTER TABLE events ADD COLUMN test boolean NOT NULL DEFAULT false;
