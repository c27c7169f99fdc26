"""Settings of the lighting scheduler (``lighting:`` in hub.yaml)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LightingSettings"]


class LightingSettings(BaseModel):
    """How the leader runs the lighting strategies."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        default=True, description="Run the scheduler on the leader (the API works either way)."
    )
    catch_up_s: float = Field(
        default=900,
        ge=0,
        le=86400,
        description="A step whose instant passed while no hub led (down, failover) is sent "
        "late if at most this late; later ones are recorded as missed, nothing sent.",
    )
    lookback_s: float = Field(
        default=86400,
        ge=60,
        le=7 * 86400,
        description="How far back the scheduler looks for steps it has not handled (missed "
        "firings older than this are not recorded).",
    )
    poll_s: float = Field(
        default=60,
        gt=0,
        le=600,
        description="The scheduler wakes at least this often, to see strategies written "
        "through another hub process (its own API wakes it at once).",
    )
    command_ttl_s: float = Field(
        default=1800,
        gt=0,
        le=86400,
        description="How long a strategy's command may wait for its agent (then it expires).",
    )
