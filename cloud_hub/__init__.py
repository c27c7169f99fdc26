"""The cloud hub: registry, ingest into the telemetry store, commands and the HTTP API."""
