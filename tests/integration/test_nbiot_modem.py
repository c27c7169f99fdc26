"""The NB-IoT modem driver against the simulated BC95 on a pseudo-terminal, with real UDP."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from drivers.errors import ConfigurationError, EncodeError
from drivers.nbiot import (
    AtCommandError,
    AtTimeout,
    Datagram,
    ModemDisconnected,
    ModemEvent,
    ModemGone,
    ModemRebooted,
    ModemReconnected,
    ModemRestarted,
    NbIotModem,
    NbIotModemSettings,
    PowerSavingChanged,
    RegistrationChanged,
    SocketClosed,
    Subscription,
)
from firmware_sim.nbiot_modem import (
    CME_INCORRECT_PARAMETERS,
    CME_OPERATION_NOT_ALLOWED,
    NbIotModemSim,
    run_nbiot_modem,
)

pytestmark = pytest.mark.integration


def settings_for(sim: NbIotModemSim, **overrides: Any) -> NbIotModemSettings:
    options: dict[str, Any] = {
        "command_timeout_s": 1.0,
        "socket_timeout_s": 2.0,
        "init_timeout_s": 3.0,
    } | overrides
    return NbIotModemSettings(port=str(sim.port_path), **options)


class EchoServer(asyncio.DatagramProtocol):
    """A UDP echo server on 127.0.0.1 that remembers what it received."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(data, addr)


@pytest.fixture
async def sim() -> AsyncIterator[NbIotModemSim]:
    async with run_nbiot_modem() as sim:
        yield sim


@pytest.fixture
async def modem(sim: NbIotModemSim) -> AsyncIterator[NbIotModem]:
    async with NbIotModem(settings_for(sim)) as modem:
        yield modem


@pytest.fixture
async def echo() -> AsyncIterator[tuple[EchoServer, int]]:
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(EchoServer, local_addr=("127.0.0.1", 0))
    try:
        yield server, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def next_event(events: Subscription[ModemEvent], kind: type[ModemEvent]) -> ModemEvent:
    """The next event of type ``kind`` (others skipped), within 2 s."""
    async with asyncio.timeout(2.0):
        while True:
            event = await events.get()
            if isinstance(event, kind):
                return event


# -- network status -----------------------------------------------------------------------


async def test_network_status(sim: NbIotModemSim, modem: NbIotModem) -> None:
    status = await modem.network_status()
    assert status.registered
    assert not status.roaming
    assert status.attached
    assert (status.csq, status.rssi_dbm, status.stat) == (24, -65, 1)
    assert status.imei == sim.imei == modem.imei
    # the session set-up: echo off and numeric errors
    assert not sim.echo
    assert sim.cmee == 1


@pytest.mark.parametrize(
    ("space", "echo", "roaming"), [(True, True, True), (False, False, False), (True, False, False)]
)
async def test_status_formats_echo_and_roaming(space: bool, echo: bool, roaming: bool) -> None:
    async with (
        run_nbiot_modem(space_after_colon=space, echo=echo, roaming=roaming, csq=99) as sim,
        NbIotModem(settings_for(sim, apn="iot.example")) as modem,
    ):
        status = await modem.network_status()
        assert (status.registered, status.roaming, status.stat) == (
            True,
            roaming,
            5 if roaming else 1,
        )
        assert status.rssi_dbm is None
        assert status.imei == sim.imei
        assert 'AT+CGDCONT=1,"IP","iot.example"' in sim.commands


async def test_registers_after_some_polls() -> None:
    async with (
        run_nbiot_modem(register_after_polls=3) as sim,
        NbIotModem(settings_for(sim)) as modem,
    ):
        first = await modem.network_status()
        assert (first.registered, first.stat, first.attached) == (False, 2, False)
        status = await modem.wait_registered(timeout_s=5, poll_s=0.01)
        assert status.registered
        assert status.attached
        assert sim.cereg_polls == 4


# -- UDP ----------------------------------------------------------------------------------


def payloads() -> list[bytes]:
    rng = random.Random(212)
    every_byte = bytes(range(256))
    return [
        b"\x00",
        b"\r\n",
        b"OK\r\n",
        every_byte,
        every_byte[::-1] + every_byte,  # 512 bytes, every value twice
        rng.randbytes(1),
        rng.randbytes(100),
        rng.randbytes(511),
        rng.randbytes(512),
    ]


async def test_udp_round_trip_through_a_real_echo_server(
    sim: NbIotModemSim, modem: NbIotModem, echo: tuple[EchoServer, int]
) -> None:
    server, port = echo
    async with await modem.open_udp(0) as sock:
        local_port = sim.socket_port(sock.socket_id)
        for payload in payloads():
            assert await sock.send("127.0.0.1", port, payload) == len(payload)
            host, from_port, data = await sock.receive(timeout_s=2)
            assert (host, from_port, data) == ("127.0.0.1", port, payload)
        assert [d for d, _ in server.received] == payloads()
        assert {addr for _, addr in server.received} == {("127.0.0.1", local_port)}
        assert [d.data for d in sim.sent_datagrams] == payloads()
        assert {(d.host, d.port) for d in sim.sent_datagrams} == {("127.0.0.1", port)}
    assert sock.closed
    assert sim.sockets == {}


async def test_datagrams_read_in_pieces_and_queued(sim: NbIotModemSim) -> None:
    async with NbIotModem(settings_for(sim, max_datagram=100)) as modem:
        sock = await modem.open_udp(0)
        target = ("127.0.0.1", sim.socket_port(sock.socket_id))
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.bind(("127.0.0.1", 0))
            sender_port = sender.getsockname()[1]
            big = bytes(range(256)) + bytes(range(256))
            for payload in (big, b"second", b"third"):
                sender.sendto(payload, target)
            got = [await sock.receive(timeout_s=2) for _ in range(3)]
        finally:
            sender.close()
        assert [d.data for d in got] == [big, b"second", b"third"]
        assert {d.port for d in got} == {sender_port}
        reads = [c for c in sim.commands if c.startswith("AT+NSORF")]
        assert len(reads) >= 6 + 2  # 512 bytes in 100-byte pieces, then the small ones
        await sock.close()


async def test_two_sockets_get_their_own_datagrams(
    modem: NbIotModem, echo: tuple[EchoServer, int]
) -> None:
    _, port = echo
    first, second = await modem.open_udp(0), await modem.open_udp(0)
    assert first.socket_id != second.socket_id
    await first.send("127.0.0.1", port, b"to first")
    await second.send("127.0.0.1", port, b"to second")
    assert (await second.receive(2)).data == b"to second"
    assert (await first.receive(2)).data == b"to first"
    await first.close()
    await second.close()
    with pytest.raises(SocketClosed):
        await first.send("127.0.0.1", port, b"x")
    with pytest.raises(SocketClosed):
        await first.receive(0.1)


async def test_bad_arguments(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sock = await modem.open_udp(0)
    with pytest.raises(ConfigurationError):
        await sock.send("hub.example", 5683, b"x")
    with pytest.raises(ConfigurationError):
        await sock.send("127.0.0.1", 0, b"x")
    with pytest.raises(EncodeError):
        await sock.send("127.0.0.1", 5683, b"")
    with pytest.raises(EncodeError):
        await sock.send("127.0.0.1", 5683, bytes(513))
    with pytest.raises(ConfigurationError):
        await modem.open_udp(70000)
    # the modem's own refusals, with their CME codes
    with pytest.raises(AtCommandError) as info:
        await modem.command("AT+NSOST=6,127.0.0.1,5683,1,00")
    assert info.value.cme_code == CME_INCORRECT_PARAMETERS
    with pytest.raises(AtCommandError) as info:
        await modem.command("AT+NSOST=0,127.0.0.1,5683,2,00")
    assert info.value.cme_code == CME_INCORRECT_PARAMETERS
    with pytest.raises(AtCommandError) as info:
        await modem.command("AT+NSOCR=STREAM,6,0,1")
    assert info.value.cme_code == CME_INCORRECT_PARAMETERS
    with pytest.raises(AtCommandError) as info:
        await modem.command("AT+NOSUCHTHING")
    assert info.value.cme_code is None
    # a port already bound
    with pytest.raises(AtCommandError) as info:
        await modem.open_udp(sim.socket_port(sock.socket_id))
    assert info.value.cme_code == CME_OPERATION_NOT_ALLOWED
    assert (await modem.network_status()).registered  # still fine


async def test_send_before_registration_is_refused() -> None:
    async with (
        run_nbiot_modem(register_after_polls=1) as sim,
        NbIotModem(settings_for(sim)) as modem,
    ):
        sock = await modem.open_udp(0)
        with pytest.raises(AtCommandError) as info:
            await sock.send("127.0.0.1", 9, b"early")
        assert info.value.cme_code == CME_OPERATION_NOT_ALLOWED
        await modem.wait_registered(timeout_s=2, poll_s=0.01)
        assert await sock.send("127.0.0.1", 9, b"now") == 3


# -- concurrency and faults ---------------------------------------------------------------


async def test_wait_registered_wakes_on_the_urc(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sim.set_registration(2)
    waiter = asyncio.ensure_future(modem.wait_registered(timeout_s=5, poll_s=30))
    mark = len(sim.commands)
    await sim.wait_for_command("AT+CGATT?", after=mark)  # the first check is done
    sim.set_registration(1)
    status = await asyncio.wait_for(waiter, 2)  # long before poll_s
    assert status.registered


async def test_registration_changes_are_events(sim: NbIotModemSim, modem: NbIotModem) -> None:
    assert sim.cereg_urc_mode == 1
    with modem.events() as events:
        sim.set_registration(2)
        assert await next_event(events, RegistrationChanged) == RegistrationChanged(2, False)
        assert not (await modem.network_status()).registered
        sim.set_registration(5)
        assert await next_event(events, RegistrationChanged) == RegistrationChanged(5, True)
        status = await modem.network_status()
        assert (status.registered, status.roaming) == (True, True)


async def test_urcs_during_a_command_are_delivered(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sim.faults.urc_before("AT+CSQ", "+NPSMR:1")
    sim.faults.urc_before("AT+CGATT?", "+CEREG:5")
    with modem.events() as events:
        status = await modem.network_status()
        assert status.registered
        assert await next_event(events, PowerSavingChanged) == PowerSavingChanged(active=True)
        assert await next_event(events, RegistrationChanged) == RegistrationChanged(5, True)


async def test_nsonmi_during_a_command(
    sim: NbIotModemSim, modem: NbIotModem, echo: tuple[EchoServer, int]
) -> None:
    _, port = echo
    sock = await modem.open_udp(0)
    sim.faults.urc_before("AT+CSQ", f"+NSONMI:{sock.socket_id},5")  # a spurious notice
    await sock.send("127.0.0.1", port, b"hello")
    status, datagram = await asyncio.gather(modem.network_status(), sock.receive(2))
    assert status.registered
    assert datagram.data == b"hello"


async def test_timeout_then_the_modem_keeps_working(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sim.faults.no_answer("AT+CSQ")
    started = time.monotonic()
    with pytest.raises(AtTimeout):
        await modem.command("AT+CSQ", timeout_s=0.2)
    assert time.monotonic() - started < 1.0
    assert (await modem.network_status()).registered


async def test_a_late_answer_does_not_answer_the_next_command(
    sim: NbIotModemSim, modem: NbIotModem
) -> None:
    sim.faults.late_answer("AT+CEREG?")
    with pytest.raises(AtTimeout):
        await modem.command("AT+CEREG?", timeout_s=0.2)
    # the next command meets "+CEREG:0,1 / OK" first: the resynchronisation absorbs them
    mark = len(sim.commands)
    with modem.events() as events:
        assert (await modem.command("AT+CGATT?")).lines == ("+CGATT:1",)
        assert await next_event(events, RegistrationChanged) == RegistrationChanged(1, True)
    assert sim.commands[mark:] == ["AT+CMEE?", "AT+CGATT?"]
    assert (await modem.network_status()).registered


async def test_error_faults(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sim.faults.error("AT+CSQ", cme_code=159)
    with pytest.raises(AtCommandError) as info:
        await modem.network_status()
    assert info.value.cme_code == 159
    sim.faults.error("AT+CSQ")
    with pytest.raises(AtCommandError) as info:
        await modem.network_status()
    assert info.value.cme_code is None
    assert (await modem.network_status()).registered


async def test_garbage_lines(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sim.faults.garbage("AT+CSQ")  # before the answer: ignored by the parser
    assert (await modem.network_status()).csq == 24
    sim.faults.garbage("AT+CSQ", replace=True)  # instead of the answer: a timeout
    with pytest.raises(AtTimeout):
        await modem.command("AT+CSQ", timeout_s=0.2)
    sim.send_urc("\x01\x02 line noise \xff")
    assert (await modem.network_status()).csq == 24


# -- unplug, replug, reboot ---------------------------------------------------------------


async def test_unplug_fails_pending_and_next_calls_then_replug_works(
    sim: NbIotModemSim, modem: NbIotModem, echo: tuple[EchoServer, int]
) -> None:
    _, port = echo
    sock = await modem.open_udp(0)
    sim.faults.no_answer("AT+CSQ")
    with modem.events() as events:
        pending = asyncio.ensure_future(modem.command("AT+CSQ", timeout_s=10))
        await sim.wait_for_command("AT+CSQ")
        started = time.monotonic()
        sim.unplug()
        with pytest.raises(ModemGone):
            await asyncio.wait_for(pending, 2)
        assert time.monotonic() - started < 1.0
        assert isinstance(await next_event(events, ModemDisconnected), ModemDisconnected)
        with pytest.raises(ModemGone):
            await modem.network_status()
        with pytest.raises(ModemGone):
            await sock.receive(0.1)
        with pytest.raises(ModemGone):
            await sock.send("127.0.0.1", port, b"x")

        sim.replug()
        status = await modem.network_status()  # reopens the same (symlinked) port
        assert status.registered
        assert isinstance(await next_event(events, ModemReconnected), ModemReconnected)
    async with await modem.open_udp(0) as again:
        await again.send("127.0.0.1", port, b"after replug")
        assert (await again.receive(2)).data == b"after replug"


async def test_explicit_reconnect_and_reentry(sim: NbIotModemSim) -> None:
    modem = NbIotModem(settings_for(sim))
    async with modem:
        sim.unplug()
        with pytest.raises(ModemGone):
            await modem.reconnect()
        sim.replug()
        await modem.reconnect()
        assert modem.connected
        assert (await modem.network_status()).registered
    assert not modem.connected
    sim.unplug()
    with pytest.raises(ModemGone):
        await modem.__aenter__()
    sim.replug()
    async with modem:  # the same object, entered again
        assert (await modem.network_status()).registered


async def test_reboot_closes_sockets_and_sets_the_session_up_again(
    sim: NbIotModemSim, modem: NbIotModem, echo: tuple[EchoServer, int]
) -> None:
    _, port = echo
    sock = await modem.open_udp(0)
    with modem.events() as events:
        mark = len(sim.commands)
        sim.reboot()
        assert await next_event(events, ModemRebooted) == ModemRebooted(
            "REBOOT_CAUSE_APPLICATION_AT"
        )
        with pytest.raises(SocketClosed):
            await sock.receive(1)
        await sim.wait_for_command("AT+CMEE=1", after=mark)
    assert (await modem.network_status()).registered
    assert sim.cmee == 1
    async with await modem.open_udp(0) as again:
        await again.send("127.0.0.1", port, b"after reboot")
        assert (await again.receive(2)) == Datagram("127.0.0.1", port, b"after reboot")


async def test_reboot_during_a_command(sim: NbIotModemSim, modem: NbIotModem) -> None:
    sim.faults.no_answer("AT+CSQ")
    pending = asyncio.ensure_future(modem.command("AT+CSQ", timeout_s=10))
    await sim.wait_for_command("AT+CSQ")
    sim.reboot("REBOOT_CAUSE_SECURITY_RESET_PIN")
    with pytest.raises(ModemRestarted):
        await asyncio.wait_for(pending, 2)
    assert (await modem.network_status()).registered


async def test_modem_not_there() -> None:
    with pytest.raises(ModemGone):
        async with NbIotModem(NbIotModemSettings(port="/nonexistent/ttyNB0")):
            pass


async def test_modem_that_never_answers(sim: NbIotModemSim) -> None:
    sim.faults.no_answer("AT", count=-1)
    with pytest.raises(AtTimeout):
        async with NbIotModem(settings_for(sim, init_timeout_s=0.3)):
            pass
    sim.faults.clear()
    async with NbIotModem(settings_for(sim)) as modem:
        assert (await modem.network_status()).registered
