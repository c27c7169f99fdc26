"""Per-agent broker credentials: the :class:`BrokerAdmin` interface and its implementations.

Every agent gets its own broker user whose ACL allows exactly its namespace
``iot/v1/<agent_id>/#`` (publish, subscribe, receive) and denies everything else, including
``#``, other agents' namespaces, ``$SYS/#`` and ``$CONTROL/#``.

:class:`MosquittoDynsec` drives Mosquitto 2's dynamic-security plugin: it connects as the
plugin's admin user, publishes JSON commands to ``$CONTROL/dynamic-security/v1`` and reads
the replies (matched by ``correlationData``) on ``$CONTROL/dynamic-security/v1/response``.
One short connection per operation: provisioning is rare, and nothing stays open to fail.
Set the broker up once with ``mosquitto_ctrl dynsec init dynsec.json <admin> <password>`` and::

    per_listener_settings false
    allow_anonymous false
    plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so
    plugin_opt_config_file /var/lib/mosquitto/dynsec.json

The hub's own broker user needs a role of its own (subscribe/receive ``iot/v1/#``, publish
``iot/v1/+/commands``, ``iot/v1/+/config/desired`` and ``iot/v1/+/acks``: :func:`hub_acls`);
create it once with
``MosquittoDynsec(admin).create_user("cloud-hub", password, hub_acls())``.

:class:`NullBrokerAdmin` is for brokers without authentication (the embedded amqtt demo
broker): credentials are issued and recorded but the broker does not enforce them.

EMQX (not implemented here, two routes):

* HTTP authentication and authorisation hooks: point EMQX's ``authentication`` (HTTP
  backend, ``POST`` with ``${username}``, ``${password}``, ``${clientid}``) and
  ``authorization`` (HTTP source with ``${username}``, ``${topic}``, ``${action}``) at two hub
  endpoints that check the username against ``agent_credentials`` (with a salted password
  hash stored there) and allow a topic iff it lies under ``iot/v1/<agent_id>/``.
  Revocation is then immediate for new connections; kick the live one through
  ``DELETE /api/v5/clients/{clientid}``.
* EMQX's built-in database through its REST API: ``POST /api/v5/authentication/
  password_based:built_in_database/users`` (user_id, password), ``POST /api/v5/authorization/
  sources/built_in_database/rules/users`` (rules: allow publish/subscribe on
  ``iot/v1/<agent_id>/#``, then deny ``#``), ``DELETE`` both plus the client kick to revoke.
  A ``BrokerAdmin`` for it is these calls over httpx with an EMQX API key.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Annotated, Any, Literal, Protocol

import aiomqtt
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from cloud_hub.provisioning.tokens import ProvisioningError
from device_profiles.wire import ROOT, Channel, agent_client_id, subscription
from iot_runtime.mqtt import MqttSettings, make_client

__all__ = [
    "CONTROL_TOPIC",
    "RESPONSE_TOPIC",
    "BrokerAdmin",
    "BrokerAdminError",
    "BrokerAdminSettings",
    "DynsecAdminSettings",
    "MosquittoDynsec",
    "NoBrokerAdminSettings",
    "NullBrokerAdmin",
    "agent_acls",
    "hub_acls",
    "open_broker_admin",
]

log = structlog.get_logger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = "$CONTROL/dynamic-security/v1/response"


class BrokerAdminError(ProvisioningError):
    """The broker refused an admin command, or could not be reached."""

    status = 502
    reason = "broker_admin_failed"


class BrokerAdmin(Protocol):
    """Manages agents' broker users. Every method raises BrokerAdminError on failure.

    The broker user of an agent is named by the hub (``username``, random per provisioning,
    so credentials from an earlier provisioning never work again), hence the disable and
    delete methods take it along with the agent id.
    """

    async def create_agent(self, agent_id: str, username: str, password: str) -> None:
        """Create the user with an ACL limited to ``iot/v1/<agent_id>/#``."""

    async def disable_agent(self, agent_id: str, username: str) -> None:
        """Refuse the user's future connections and disconnect the connected client."""

    async def delete_agent(self, agent_id: str, username: str) -> None:
        """Remove the user and its ACL; no error if it does not exist."""


class DynsecAdminSettings(BaseModel):
    """Mosquitto 2 with the dynamic-security plugin."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dynsec"] = "dynsec"
    username: str = Field(description="The plugin's admin user (mosquitto_ctrl dynsec init).")
    password: SecretStr
    bind_client_id: bool = Field(
        default=True,
        description="Tie each agent's credentials to its MQTT client id (agent-<agent_id>).",
    )
    timeout_s: float = Field(default=10.0, gt=0)


class NoBrokerAdminSettings(BaseModel):
    """A broker without authentication (demo): credentials are not enforced."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["none"] = "none"


BrokerAdminSettings = Annotated[
    DynsecAdminSettings | NoBrokerAdminSettings, Field(discriminator="kind")
]


def _acl(kind: str, topic: str, *, allow: bool, priority: int) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": priority, "allow": allow}


_KINDS = ("publishClientSend", "publishClientReceive", "subscribePattern")


def agent_acls(agent_id: str) -> list[dict[str, Any]]:
    """The dynamic-security ACL of an agent's role: its namespace allowed, all else denied."""
    namespace = f"{ROOT}/{agent_id}/#"
    # explicit denials below the grants, so a permissive defaultACLAccess cannot widen reach
    return [_acl(kind, namespace, allow=True, priority=10) for kind in _KINDS] + [
        _acl(kind, "#", allow=False, priority=0) for kind in _KINDS
    ]


def hub_acls() -> list[dict[str, Any]]:
    """The ACL of the hub's own broker user: every agent's namespace (also through MQTT 5
    shared subscriptions, which Mosquitto checks as ``$share/<group>/<filter>``); publish
    only on the channels the hub sends (commands, desired configuration, stored acks)."""
    return [
        _acl("subscribePattern", f"{ROOT}/#", allow=True, priority=10),
        _acl("subscribePattern", f"$share/+/{ROOT}/#", allow=True, priority=10),
        _acl("publishClientReceive", f"{ROOT}/#", allow=True, priority=10),
        *(
            _acl("publishClientSend", subscription(channel), allow=True, priority=10)
            for channel in Channel
            if channel.downlink
        ),
        *(_acl(kind, "#", allow=False, priority=0) for kind in _KINDS),
    ]


class MosquittoDynsec:
    """BrokerAdmin for Mosquitto 2's dynamic-security plugin (see the module docstring)."""

    def __init__(
        self, mqtt: MqttSettings, *, bind_client_id: bool = True, timeout_s: float = 10.0
    ) -> None:
        """``mqtt``: where the broker is, with the plugin's admin username and password."""
        self.mqtt = mqtt
        self.bind_client_id = bind_client_id
        self.timeout_s = timeout_s

    async def execute(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send dynamic-security ``commands``; return their responses in order.

        Raises BrokerAdminError if the broker is unreachable or does not answer in time;
        a command's own ``error`` is left for the caller to judge (see :meth:`run`).
        """
        nonce = secrets.token_hex(6)
        tagged = [{**c, "correlationData": f"{nonce}-{i}"} for i, c in enumerate(commands)]
        wanted = {c["correlationData"]: i for i, c in enumerate(tagged)}
        responses: list[dict[str, Any] | None] = [None] * len(tagged)
        client = make_client(self.mqtt, f"cloud-hub-dynsec-{nonce}", persistent_session=False)
        try:
            async with asyncio.timeout(self.timeout_s), client:
                await client.subscribe(RESPONSE_TOPIC, qos=1)
                await client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1)
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                    for response in json.loads(payload).get("responses", []):
                        index = wanted.pop(str(response.get("correlationData")), None)
                        if index is not None:
                            responses[index] = response
                    if not wanted:
                        break
        except TimeoutError as exc:
            raise BrokerAdminError(
                f"the broker did not answer dynamic-security commands within {self.timeout_s} s"
            ) from exc
        except aiomqtt.MqttError as exc:
            raise BrokerAdminError(f"cannot reach the broker's admin interface: {exc}") from exc
        except ValueError as exc:  # json.JSONDecodeError
            raise BrokerAdminError(f"unreadable dynamic-security response: {exc}") from exc
        return [r for r in responses if r is not None]

    async def run(self, commands: list[dict[str, Any]], *, tolerate: tuple[str, ...] = ()) -> None:
        """Execute ``commands``; raise BrokerAdminError naming the first that failed
        (errors containing one of ``tolerate`` are accepted)."""
        for command, response in zip(commands, await self.execute(commands), strict=True):
            error = response.get("error")
            if error and not any(t in str(error) for t in tolerate):
                raise BrokerAdminError(f"dynamic-security {command['command']}: {error}")

    async def create_user(
        self,
        username: str,
        password: str,
        acls: list[dict[str, Any]],
        *,
        client_id: str | None = None,
        text: str = "",
    ) -> None:
        """A broker user with a role of its own (named like the user) holding ``acls``.

        Also how to create the hub's own user: ``create_user("cloud-hub", pw, hub_acls())``.
        """
        create_client: dict[str, Any] = {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": text,
        }
        if client_id is not None:
            create_client["clientid"] = client_id
        commands: list[dict[str, Any]] = [
            {"command": "createRole", "rolename": username},
            *({"command": "addRoleACL", "rolename": username, **acl} for acl in acls),
            create_client,
            {"command": "addClientRole", "username": username, "rolename": username},
        ]
        try:
            await self.run(commands)
        except BrokerAdminError:
            # leave nothing half-made behind (a role without client, a client without role)
            await self._delete(username, strict=False)
            raise

    async def create_agent(self, agent_id: str, username: str, password: str) -> None:
        await self.create_user(
            username,
            password,
            agent_acls(agent_id),
            client_id=agent_client_id(agent_id) if self.bind_client_id else None,
            text=f"edge agent {agent_id}",
        )
        log.info("broker user created", agent_id=agent_id, username=username)

    async def disable_agent(self, agent_id: str, username: str) -> None:
        # disableClient also disconnects the user's connected clients (Mosquitto >= 2.0)
        await self.run([{"command": "disableClient", "username": username}])
        log.info("broker user disabled", agent_id=agent_id, username=username)

    async def delete_agent(self, agent_id: str, username: str) -> None:
        await self._delete(username, strict=True)
        log.info("broker user deleted", agent_id=agent_id, username=username)

    async def _delete(self, username: str, *, strict: bool) -> None:
        commands = [
            {"command": "deleteClient", "username": username},
            {"command": "deleteRole", "rolename": username},
        ]
        try:
            await self.run(commands, tolerate=("not found",))
        except BrokerAdminError:
            if strict:
                raise
            log.warning("clean-up of a broker user failed", username=username, exc_info=True)


class NullBrokerAdmin:
    """BrokerAdmin for brokers without authentication: it records nothing, enforces nothing."""

    async def create_agent(self, agent_id: str, username: str, password: str) -> None:
        log.warning(
            "the broker does not enforce per-agent credentials (broker_admin kind 'none')",
            agent_id=agent_id,
        )

    async def disable_agent(self, agent_id: str, username: str) -> None:
        log.warning(
            "the broker cannot refuse a revoked agent (broker_admin kind 'none')", agent_id=agent_id
        )

    async def delete_agent(self, agent_id: str, username: str) -> None:
        return None


def open_broker_admin(
    settings: DynsecAdminSettings | NoBrokerAdminSettings, broker: MqttSettings
) -> BrokerAdmin:
    """The BrokerAdmin for ``settings``; ``broker`` says where the broker is (host, port, TLS)."""
    if isinstance(settings, NoBrokerAdminSettings):
        return NullBrokerAdmin()
    admin = broker.model_copy(update={"username": settings.username, "password": settings.password})
    return MosquittoDynsec(
        admin, bind_client_id=settings.bind_client_id, timeout_s=settings.timeout_s
    )
