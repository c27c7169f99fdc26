"""Cloud hub benchmark: telemetry ingest into InfluxDB and command round trips.

    .venv/bin/python -m bench.ingest           # full run, about 2 minutes
    .venv/bin/python -m bench.ingest --quick   # smoke run, about 30 s

Everything runs against a private Mosquitto and a private InfluxDB 1.6 started for the run.
Prints two tables; nothing is asserted.

Ingest: N simulated agents (each with 10 smart poles) publish telemetry batches of 100
readings x 10 values at QoS 1, each agent one message at a time (as the real uplink does), all
agents at once. Measured from the start signal until InfluxDB's ``COUNT`` of the run's readings
equals what was published. In the same run, two baselines for the same data: InfluxDB's own
write rate for the same points as line protocol in 5,000-point batches over httpx, and a bare
aiomqtt subscriber's rate for the same MQTT messages (no validation, no storage).

The hub runs in this process (``cloud_hub.server.serve``, as in ``tests.helpers.running_hub``);
the load generator runs in a separate process (``--generate``) so that building and publishing
messages does not share the hub's event loop: on 2 cores it still competes with the hub,
Mosquitto and InfluxDB for CPU, which the CPU columns show.

Commands: a real agent (``edge-agent run`` subprocess) in front of a simulated pole
(``run_smart_pole`` in this process); ``set_dimming`` commands sent one after another with
``POST /api/v1/devices/{id}/commands``, each followed by ``GET /api/v1/commands/{id}`` every
5 ms until it is ``succeeded``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import sys
import time
from statistics import median, quantiles
from typing import Any

import aiomqtt
import httpx

from bench._servers import (
    AgentProcess,
    ProcStats,
    console,
    free_port,
    machine,
    print_table,
    private_servers,
)
from cloud_hub.ingest.agent_limits import AgentLimitSettings
from cloud_hub.settings import ApiSettings, HubSettings
from cloud_hub.storage import StoredReading
from cloud_hub.storage.line_protocol import encode_lines
from cloud_hub.storage.settings import InfluxV1Settings
from device_profiles.wire import (
    QOS,
    AgentState,
    Channel,
    DeviceInfo,
    Reading,
    TelemetryBatch,
    agent_client_id,
    encode,
    topic,
)
from firmware_sim import run_smart_pole
from iot_runtime import configure_logging
from iot_runtime.mqtt import MqttSettings, make_client
from tests.helpers import make_keys, running_hub

READINGS_PER_BATCH = 100
CPU_KEYS = ("hub", "generator", "broker", "influxd")
DEVICES_PER_AGENT = 10
LINE_BATCH = 5000
COMMAND_LIMIT_S = 10.0
BASE_TS = 1_760_000_000_000
FLOATS = ("voltage", "current", "power", "energy", "illuminance")
FLOATS2 = ("tilt", "temperature", "humidity", "noise")


# -- the data -----------------------------------------------------------------------------------


def agent_ids(run: str, agents: int) -> list[str]:
    return [f"{run}-a{index:03d}" for index in range(agents)]


def device_id(agent_id: str, index: int) -> str:
    return f"{agent_id}-p{index % DEVICES_PER_AGENT}"


def readings_of(agent_id: str, batches: int) -> list[Reading]:
    out = []
    for k in range(batches * READINGS_PER_BATCH):
        values: dict[str, int | float] = {name: 1.5 + (k % 97) + i for i, name in enumerate(FLOATS)}
        values.update(dict.fromkeys(FLOATS2, 20.5 + k % 13))
        values["pm25"] = k % 200
        out.append(Reading(device_id=device_id(agent_id, k), ts=BASE_TS + k, values=values))
    return out


def payloads_of(agent_id: str, batches: int) -> list[bytes]:
    readings = readings_of(agent_id, batches)
    return [
        encode(
            TelemetryBatch(
                agent_id=agent_id,
                seq=seq,
                readings=readings[seq * READINGS_PER_BATCH : (seq + 1) * READINGS_PER_BATCH],
            )
        )
        for seq in range(batches)
    ]


def birth_of(agent_id: str) -> bytes:
    devices = [
        DeviceInfo(device_id=device_id(agent_id, i), profile="smart_pole")
        for i in range(DEVICES_PER_AGENT)
    ]
    return encode(AgentState(agent_id=agent_id, state="online", devices=devices))


# -- the load generator (a subprocess) ----------------------------------------------------------


async def generate(host: str, port: int, run: str, agents: int, batches: int) -> None:
    """Publish births, say ``ready``, wait for ``go`` on stdin, publish, say ``done``."""
    ids = agent_ids(run, agents)
    payloads = {a: payloads_of(a, batches) for a in ids}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for a in ids:
            mqtt = MqttSettings(host=host, port=port)
            client = make_client(mqtt, agent_client_id(a), persistent_session=False)
            clients[a] = await stack.enter_async_context(client)
            await clients[a].publish(topic(a, Channel.STATE), birth_of(a), qos=QOS, retain=True)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        cpu0 = _cpu_self()
        start = time.perf_counter()

        async def one_agent(a: str) -> None:
            for payload in payloads[a]:
                await clients[a].publish(topic(a, Channel.TELEMETRY), payload, qos=QOS)

        await asyncio.gather(*(one_agent(a) for a in ids))
        print(f"done {time.perf_counter() - start:.6f} {_cpu_self() - cpu0:.6f}", flush=True)


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Generator:
    """``python -m bench.ingest --generate ...`` driven over stdin/stdout."""

    def __init__(self, broker: Any, run: str, agents: int, batches: int) -> None:
        self.args = [
            sys.executable, "-m", "bench.ingest", "--generate", "--host", broker.host,
            "--port", str(broker.port), "--run", run, "--agents", str(agents),
            "--batches", str(batches),
        ]  # fmt: skip
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Generator:
        self.process = await asyncio.create_subprocess_exec(
            *self.args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        line = await self._line(120)
        if line != "ready":
            raise RuntimeError(f"generator said {line!r}")
        return self

    async def _line(self, limit_s: float) -> str:
        assert self.process is not None
        assert self.process.stdout is not None
        async with asyncio.timeout(limit_s):
            return (await self.process.stdout.readline()).decode().strip()

    def go(self) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def done(self) -> tuple[float, float]:
        """(seconds publishing took, generator CPU seconds)."""
        _, seconds, cpu = (await self._line(300)).split()
        return float(seconds), float(cpu)

    async def __aexit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
        await process.wait()


# -- measurements -------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds of this process (the hub), Mosquitto and InfluxDB over a measurement."""

    def __init__(self, servers: Any) -> None:
        self.pids = {"broker": servers.mosquitto.pid, "influxd": servers.influxdb.pid}

    def sample(self) -> dict[str, float]:
        out = {name: ProcStats.of(pid).cpu_s for name, pid in self.pids.items()}
        out["hub"] = _cpu_self()
        return out

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


async def influx_count(http: httpx.AsyncClient, url: str, db: str, run: str) -> int:
    q = f"SELECT COUNT(power) FROM smart_pole WHERE agent_id =~ /^{run}-/"
    response = await http.post(f"{url}/query", params={"db": db, "q": q})
    series = response.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def bench_hub_ingest(
    servers: Any, hub: Any, http: httpx.AsyncClient, run: str, agents: int, batches: int
) -> dict[str, Any]:
    url = servers.influxdb.url
    total = agents * batches * READINGS_PER_BATCH
    meter = CpuMeter(servers)
    async with Generator(servers.mosquitto, run, agents, batches) as gen:
        last = device_id(agent_ids(run, agents)[-1], DEVICES_PER_AGENT - 1)
        async with asyncio.timeout(30):
            await until(lambda: registered(hub, last))
        before = meter.sample()
        start = time.perf_counter()
        gen.go()
        published = asyncio.create_task(gen.done())
        async with asyncio.timeout(300):
            await until(lambda: counted(http, url, run, total), interval_s=0.1)
        seconds = time.perf_counter() - start
        cpu = meter.delta(before, meter.sample())
        publish_s, gen_cpu = await published
    cpu["generator"] = gen_cpu
    return {"seconds": seconds, "publish_s": publish_s, "total": total, "cpu": cpu}


async def bench_bare_subscriber(servers: Any, run: str, agents: int, batches: int) -> float:
    """Seconds for a bare aiomqtt subscriber to receive the same messages."""
    broker = servers.mosquitto
    expected = agents * batches
    got = 0
    finished = asyncio.Event()
    ready = asyncio.Event()

    async def subscribe() -> None:
        nonlocal got
        async with aiomqtt.Client(broker.host, broker.port, identifier=f"bare-{run}") as client:
            await client.subscribe(f"iot/v1/+/{Channel.TELEMETRY.value}", qos=QOS)
            ready.set()
            async for message in client.messages:
                if str(message.topic).startswith(f"iot/v1/{run}-"):
                    got += 1
                    if got == expected:
                        finished.set()

    task = asyncio.create_task(subscribe())
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with Generator(broker, run, agents, batches) as gen:
            start = time.perf_counter()
            gen.go()
            await asyncio.wait_for(finished.wait(), 300)
            seconds = time.perf_counter() - start
            await gen.done()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
    return seconds


async def bench_influx_raw(http: httpx.AsyncClient, url: str, total: int) -> float:
    """Seconds to write ``total`` readings as line protocol, 5,000 points per request."""
    await http.post(f"{url}/query", params={"q": 'CREATE DATABASE "raw"'})
    agents = max(1, total // (READINGS_PER_BATCH * 10))
    stored = [
        StoredReading(r.device_id, a, "smart_pole", r.ts, dict(r.values))
        for a in agent_ids("raw", agents)
        for r in readings_of(a, total // agents // READINGS_PER_BATCH)
    ]
    bodies = [encode_lines(stored[i : i + LINE_BATCH]) for i in range(0, len(stored), LINE_BATCH)]
    start = time.perf_counter()
    for body in bodies:
        response = await http.post(
            f"{url}/write", params={"db": "raw", "precision": "ms"}, content=body
        )
        response.raise_for_status()
    return time.perf_counter() - start


async def until(probe: Any, interval_s: float = 0.05) -> None:
    """Poll ``probe`` until it returns true (the caller bounds the time)."""
    while True:
        if await probe():
            return
        await asyncio.sleep(interval_s)


async def registered(hub: Any, device: str) -> bool:
    return bool((await hub.api.get(f"/api/v1/devices/{device}")).status_code == 200)


async def counted(http: httpx.AsyncClient, url: str, run: str, total: int) -> bool:
    return await influx_count(http, url, "iot", run) >= total


def metrics_of(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("hub_") and " " in line and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


# -- commands -----------------------------------------------------------------------------------


async def bench_commands(servers: Any, hub: Any, count: int) -> dict[str, list[float]]:
    broker = servers.mosquitto
    async with run_smart_pole(seed=1, port=0, tick_s=None) as sim:
        config = {
            "agent_id": "cmd-agent",
            "mqtt": {"host": broker.host, "port": broker.port},
            "devices": [
                {
                    "device_id": "cmd-pole",
                    "profile": "smart_pole",
                    "connection": {"transport": "modbus_tcp", "host": sim.host, "port": sim.port},
                    "poll_interval_s": 5.0,
                    "commands_per_minute": 6000,  # the maximum; the default 30 would refuse
                }
            ],
            "data_dir": str(servers.tmp / "cmd-agent"),
            "log_level": "INFO",  # one line per command: to explain a stuck one
            "log_format": "json",
        }
        with AgentProcess(config, servers.tmp / "cmd-agent") as agent:
            try:
                async with asyncio.timeout(30):
                    await until(lambda: registered(hub, "cmd-pole"))
            except TimeoutError:
                console.print(f"[red]agent did not register:[/]\n{agent.log_tail()}")
                raise
            timings: dict[str, list[float]] = {"accepted": [], "delivered": [], "succeeded": []}
            stuck: list[dict[str, Any]] = []
            for index in range(count):
                start = time.perf_counter()
                response = await hub.api.post(
                    "/api/v1/devices/cmd-pole/commands",
                    json={"name": "set_dimming", "params": {"level": index % 101}},
                )
                response.raise_for_status()
                timings["accepted"].append(time.perf_counter() - start)
                command_id = response.json()["command_id"]
                seen = set()
                status: dict[str, Any] = {}
                try:
                    async with asyncio.timeout(COMMAND_LIMIT_S):
                        while True:
                            status = (await hub.api.get(f"/api/v1/commands/{command_id}")).json()
                            now = time.perf_counter() - start
                            if status["status"] == "delivered" and "delivered" not in seen:
                                seen.add("delivered")
                                timings["delivered"].append(now)
                            if status["status"] == "succeeded":
                                timings["succeeded"].append(now)
                                break
                            if status["status"] in ("failed", "rejected", "expired", "timed_out"):
                                raise RuntimeError(f"command {status}")
                            await asyncio.sleep(0.005)
                except TimeoutError:
                    stuck.append(status)
                    console.print(
                        f"[red]command {index} not succeeded after {COMMAND_LIMIT_S} s:[/] {status}"
                    )
                    if len(stuck) >= 3:
                        break
            for row in stuck:  # what became of them in the end
                final = (await hub.api.get(f"/api/v1/commands/{row['command_id']}")).json()
                console.print(
                    f"[red]stuck command[/] {row['command_id']}: {final['status']} "
                    f"{final['detail']!r}, updated {final['updated_at']} (created "
                    f"{final['created_at']})"
                )
                log = agent.log_path.read_text(errors="replace").splitlines()
                console.print("\n".join(line for line in log if row["command_id"] in line))
            writes = len(sim.writes)
    if stuck:
        console.print(f"[red]{len(stuck)} command(s) did not succeed within {COMMAND_LIMIT_S} s[/]")
    if writes != count:
        console.print(f"[red]expected {count} writes at the pole, saw {writes}[/]")
    return timings


# -- main ---------------------------------------------------------------------------------------


def rate(n: float, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


async def main(quick: bool) -> None:
    configure_logging("WARNING", "console")
    console.print(f"[bold]bench.ingest[/] {'--quick ' if quick else ''}on {machine()}")
    fleets = [1, 10] if quick else [1, 10, 50]
    batches_total = 300 if quick else 1500
    commands = 30 if quick else 200
    with private_servers(influxdb=True) as servers:
        broker, influx = servers.mosquitto, servers.influxdb
        assert influx is not None
        rows, load_rows = [], []
        async with httpx.AsyncClient(timeout=60) as http:
            total = batches_total * READINGS_PER_BATCH
            raw_s = await bench_influx_raw(http, influx.url, total)
            raw_rate = total / raw_s
            # before the hub ever connects: its persistent session would queue these messages
            bare = {n: await bench_bare_subscriber(servers, f"bare{n}", n, batches_total // n)
                    for n in fleets}  # fmt: skip
            settings = HubSettings(
                mqtt=MqttSettings(host=broker.host, port=broker.port),
                client_id="bench-hub",
                storage=InfluxV1Settings(url=influx.url, database="iot"),
                registry_url=f"sqlite+aiosqlite:///{servers.tmp / 'registry.db'}",
                api=ApiSettings(port=free_port()),
                # raw publishers that do not wait for stored acknowledgements: not limited
                agent_limits=AgentLimitSettings(enabled=False),
                log_level="WARNING",
            )
            keys = await make_keys(settings.registry_url, "admin")
            async with running_hub(settings, keys) as hub:
                await bench_hub_ingest(servers, hub, http, "warmup", 2, 20)  # not reported
                for n in fleets:
                    m0 = metrics_of((await hub.api.get("/metrics")).text)
                    r = await bench_hub_ingest(servers, hub, http, f"hub{n}", n, batches_total // n)
                    m1 = metrics_of((await hub.api.get("/metrics")).text)
                    hub_rate = r["total"] / r["seconds"]
                    bare_rate = r["total"] / bare[n]
                    cpu = r["cpu"]
                    writes = m1["hub_write_batches_total"] - m0["hub_write_batches_total"]
                    write_s = m1.get("hub_write_seconds_total", 0) - m0.get(
                        "hub_write_seconds_total", 0
                    )
                    dead = m1["hub_dead_letters_total"] - m0["hub_dead_letters_total"]
                    label = f"{n} x {batches_total // n} msgs"
                    rows.append(
                        [
                            label,
                            f"{r['total']:,}",
                            f"{r['seconds']:.2f}",
                            f"{hub_rate:,.0f}",
                            f"{bare_rate:,.0f} ({bare[n]:.2f} s)",
                            f"{raw_rate:,.0f} ({raw_s:.2f} s)",
                            f"{hub_rate / bare_rate:.3f}",
                            f"{hub_rate / raw_rate:.2f}",
                        ]
                    )
                    load_rows.append(
                        [
                            label,
                            f"{r['publish_s']:.2f}",
                            *(f"{cpu[k] / r['seconds'] * 100:.0f}" for k in CPU_KEYS),
                            f"{writes:.0f}",
                            f"{r['total'] / max(writes, 1):,.0f}",
                            f"{write_s:.2f}",
                            f"{dead:.0f}",
                        ]
                    )
                timings = await bench_commands(servers, hub, commands)
    print_table(
        "Hub ingest: readings (10 values each) landed in InfluxDB 1.6, with baselines",
        [
            "agents x msgs",
            "readings",
            "seconds",
            "hub readings/s",
            "bare MQTT sub/s",
            "raw InfluxDB/s",
            "hub / sub",
            "hub / raw",
        ],
        rows,
        "hub: 'go' to the generator -> InfluxDB COUNT of the run equals the total (polled every "
        "0.1 s). bare MQTT sub: the same messages, from other agents of the same shape, to a "
        "plain aiomqtt subscriber (QoS 1, no parsing). raw InfluxDB: the same points as line "
        "protocol, 5,000 per request, one request at a time, httpx.",
    )
    print_table(
        "Hub ingest: where the CPU went (% of one core over the run; 200 % = both cores)",
        [
            "agents x msgs",
            "publishing done s",
            "hub+bench",
            "generator",
            "mosquitto",
            "influxd",
            "store writes",
            "readings/write",
            "s in writes",
            "dead letters",
        ],
        load_rows,
        "hub+bench: this process (hub, COUNT poller). generator: the publishing subprocess "
        "(CPU after 'go'). store writes and time in writes from the hub's /metrics.",
    )
    command_rows = []
    for what, label in (
        ("succeeded", "POST -> status succeeded (the round trip)"),
        ("accepted", "POST -> 202 (queued, published, marked sent)"),
        ("delivered", "POST -> status delivered seen (when seen)"),
    ):
        values = timings[what]
        if len(values) < 2:
            command_rows.append([label, f"{len(values)}", "", "", "", ""])
            continue
        q = quantiles(values, n=100, method="inclusive")
        command_rows.append(
            [
                label,
                f"{len(values)}",
                f"{median(values) * 1000:.1f}",
                f"{q[89] * 1000:.1f}",
                f"{q[98] * 1000:.1f}",
                f"{max(values) * 1000:.1f}",
            ]
        )
    print_table(
        f"Command round trip, {len(timings['succeeded'])} set_dimming commands one after another",
        ["span", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        command_rows,
        "hub, simulated pole and polling API client in the bench process; the agent a "
        "subprocess; status polled every 5 ms (adds up to ~5 ms + one GET). 'delivered' is "
        "often overtaken by 'succeeded' between two polls.",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--generate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--agents", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        asyncio.run(generate(args.host, args.port, args.run, args.agents, args.batches))
    else:
        began = time.perf_counter()
        asyncio.run(main(args.quick))
        console.print(f"done in {time.perf_counter() - began:.0f} s")
