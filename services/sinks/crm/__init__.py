"""The crm sink."""
