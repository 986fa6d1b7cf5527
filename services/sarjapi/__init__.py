"""Sarj.ai's call API (``GET /calls/{call_id}``): the client, its settings, and the one
conversion from a call detail to the webhook delivery Sarj.ai would have sent."""
