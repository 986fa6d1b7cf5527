"""The alerts sink."""
