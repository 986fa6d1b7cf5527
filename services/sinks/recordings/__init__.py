"""The recordings sink: Sarj.ai's signed, expiring recording URLs fetched to durable storage."""
