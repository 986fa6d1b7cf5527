"""The shared core: configuration, Kafka clients, metrics, logging, records."""
