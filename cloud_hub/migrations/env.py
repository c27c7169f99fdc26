"""Alembic environment: runs on the connection the hub hands over (see cloud_hub.registry)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

# each import registers its tables on Base
import cloud_hub.alarms.models
import cloud_hub.cluster.models
import cloud_hub.coap.models
import cloud_hub.console.models
import cloud_hub.dead_letters.models
import cloud_hub.events.log_models
import cloud_hub.events.webhook_models
import cloud_hub.lighting.models
import cloud_hub.provisioning.models  # noqa: F401
from cloud_hub.registry.models import Base

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `cloud-hub migrate` (it passes the connection)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite needs batch mode to alter tables
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
