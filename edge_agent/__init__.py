"""The edge agent: polls field devices, forwards telemetry to the hub, executes commands."""
