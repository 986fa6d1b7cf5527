"""Stand-ins for third-party services the tests cannot reach (only the CRM so far)."""
