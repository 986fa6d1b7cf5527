"""Sink workers: each its own deployable and consumer group; the contract in
``base``, the runner every sink worker shares in ``runner``."""
