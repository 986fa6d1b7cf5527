"""The CRM sink: finished calls become call activities on contacts (docs/sinks-crm.md)."""
