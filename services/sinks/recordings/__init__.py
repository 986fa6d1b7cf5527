"""The recordings sink: the recordings events link to (``recording_url``, often signed
and expiring) fetched to durable storage."""
