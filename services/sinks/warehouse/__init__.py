"""The warehouse sink."""
