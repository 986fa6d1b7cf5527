"""The ingest service: authenticate, publish the raw bytes, answer 202."""
