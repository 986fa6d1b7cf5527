"""Sink workers: each its own deployable and consumer group (hookstream.core.sink)."""
