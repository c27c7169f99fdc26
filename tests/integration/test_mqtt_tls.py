"""The uplink over TLS: the broker's certificate is verified (a wrong CA is refused)."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from iot_runtime.mqtt import MqttSettings, TlsSettings
from tests.harness import free_port

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _pki(folder: Path, name: str) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it, in ``folder/name-*``."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}-ca.key",
        "-out",
        f"{name}-ca.crt",
        "-days",
        "1",
        "-subj",
        f"/CN={name} test CA",
        cwd=folder,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}-server.key",
        "-out",
        f"{name}-server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=folder,
    )
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}-server.csr",
        "-CA",
        f"{name}-ca.crt",
        "-CAkey",
        f"{name}-ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}-server.crt",
        "-days",
        "1",
        "-extfile",
        "san.cnf",
        cwd=folder,
    )


async def test_agent_connects_over_tls_and_refuses_an_unknown_ca(
    mosquitto_factory: Callable[..., Any], tmp_path: Path, unique_id: str
) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    _pki(pki, "good")
    _pki(pki, "other")
    tls_port = free_port()
    await asyncio.to_thread(
        mosquitto_factory,
        extra_config=(
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {pki / 'good-ca.crt'}\ncertfile {pki / 'good-server.crt'}\n"
            f"keyfile {pki / 'good-server.key'}\n"
        ),
    )

    async def connects(ca: str) -> bool:
        agent = Agent(
            AgentSettings(
                agent_id=f"tls-{unique_id}",
                mqtt=MqttSettings(
                    host="127.0.0.1", port=tls_port, tls=TlsSettings(ca_file=pki / ca)
                ),
                data_dir=tmp_path / f"agent-{ca}",
            )
        )
        task = asyncio.create_task(agent.run())
        try:
            await asyncio.wait_for(agent.uplink.connected.wait(), 5)
            return True
        except TimeoutError:
            return False
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    assert await connects("good-ca.crt")
    # a broker it cannot verify is never trusted: the agent's TLS context refuses the handshake
    # (checked on a plain connection: paho-mqtt 2.2 leaves a refused socket to the garbage
    # collector, whose ResourceWarning would surface in some later test)
    context = TlsSettings(ca_file=pki / "other-ca.crt").context()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection("127.0.0.1", tls_port, ssl=context)
