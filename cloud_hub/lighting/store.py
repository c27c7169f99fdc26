"""The lighting tables' queries: strategies, and firings claimed once (see the models)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError

from cloud_hub.lighting.models import LightingFiringRow, LightingStrategyRow
from cloud_hub.lighting.spec import StrategySpec
from cloud_hub.registry import Registry, utcnow

__all__ = ["Claim", "LightingStore", "aware", "spec_of"]


def aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def spec_of(row: LightingStrategyRow) -> StrategySpec:
    """The strategy a row holds (validated again: a row is only ever written from a spec)."""
    return StrategySpec.model_validate(
        {
            "name": row.name,
            "selector": row.selector,
            "timezone": row.timezone,
            "lat": row.lat,
            "lon": row.lon,
            "steps": row.steps,
            "weekdays": row.weekdays,
            "enabled": row.enabled,
        }
    )


def _columns(spec: StrategySpec) -> dict[str, Any]:
    dumped = spec.model_dump(mode="json")
    dumped["selector"] = spec.selector.model_dump(mode="json", exclude_none=True)
    return dumped


@dataclass(frozen=True)
class Claim:
    """A firing to make: the key the UNIQUE constraint guards, and what to send."""

    strategy_id: str
    step: int
    scheduled_for: datetime
    command: str
    params: dict[str, Any]
    trigger: str = "schedule"


class LightingStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    # -- strategies -------------------------------------------------------------------------

    async def create(self, spec: StrategySpec, created_by: str) -> LightingStrategyRow:
        now = utcnow()
        row = LightingStrategyRow(
            strategy_id=uuid.uuid4().hex,
            created_by=created_by,
            created_at=now,
            updated_at=now,
            **_columns(spec),
        )
        async with self.registry.session.begin() as db:
            db.add(row)
        return row

    async def get(self, strategy_id: str) -> LightingStrategyRow | None:
        async with self.registry.session() as db:
            return await db.get(LightingStrategyRow, strategy_id)

    async def strategies(self, *, enabled_only: bool = False) -> list[LightingStrategyRow]:
        query = select(LightingStrategyRow).order_by(
            LightingStrategyRow.created_at, LightingStrategyRow.strategy_id
        )
        if enabled_only:
            query = query.where(LightingStrategyRow.enabled.is_(True))
        async with self.registry.session() as db:
            return list((await db.scalars(query)).all())

    async def replace(self, strategy_id: str, spec: StrategySpec) -> LightingStrategyRow | None:
        async with self.registry.session.begin() as db:
            row = await db.get(LightingStrategyRow, strategy_id)
            if row is None:
                return None
            for name, value in _columns(spec).items():
                setattr(row, name, value)
            row.updated_at = utcnow()
        return row

    async def remove(self, strategy_id: str) -> bool:
        """Delete a strategy and its firings; False if there was none."""
        async with self.registry.session.begin() as db:
            result = cast(
                "CursorResult[Any]",
                await db.execute(
                    delete(LightingStrategyRow).where(
                        LightingStrategyRow.strategy_id == strategy_id
                    )
                ),
            )
            await db.execute(
                delete(LightingFiringRow).where(LightingFiringRow.strategy_id == strategy_id)
            )
        return result.rowcount == 1

    # -- firings ----------------------------------------------------------------------------

    async def handled(self, strategy_id: str, since: datetime) -> set[tuple[int, datetime]]:
        """(step, scheduled_for) of the firings recorded for instants after ``since``."""
        query = select(LightingFiringRow.step, LightingFiringRow.scheduled_for).where(
            LightingFiringRow.strategy_id == strategy_id,
            LightingFiringRow.scheduled_for > since.astimezone(UTC),
        )
        async with self.registry.session() as db:
            return {(step, aware(at)) for step, at in (await db.execute(query)).all()}

    async def claim(
        self, claim: Claim, *, outcome: str = "sending", detail: str = ""
    ) -> LightingFiringRow | None:
        """Insert the firing; None when it is recorded already (another leader, or before a
        restart): the caller then does nothing."""
        row = LightingFiringRow(
            strategy_id=claim.strategy_id,
            step=claim.step,
            scheduled_for=claim.scheduled_for.astimezone(UTC),
            fired_at=utcnow(),
            trigger=claim.trigger,
            command=claim.command,
            params=claim.params,
            outcome=outcome,
            detail=detail,
        )
        try:
            async with self.registry.session.begin() as db:
                db.add(row)
        except IntegrityError:
            return None
        return row

    async def finish(
        self, firing_id: int, outcome: str, detail: str, group_id: str | None = None
    ) -> None:
        async with self.registry.session.begin() as db:
            await db.execute(
                update(LightingFiringRow)
                .where(LightingFiringRow.id == firing_id)
                .values(outcome=outcome, detail=detail, group_id=group_id)
            )

    async def firings(self, strategy_id: str, limit: int) -> list[LightingFiringRow]:
        """A strategy's firings, newest scheduled first."""
        query = (
            select(LightingFiringRow)
            .where(LightingFiringRow.strategy_id == strategy_id)
            .order_by(LightingFiringRow.scheduled_for.desc(), LightingFiringRow.id.desc())
            .limit(limit)
        )
        async with self.registry.session() as db:
            return list((await db.scalars(query)).all())
