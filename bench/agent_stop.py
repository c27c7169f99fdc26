"""Soak: stop a saturated edge agent many times; how long each stop takes (issue 21).

    .venv/bin/python -m bench.agent_stop                       # 400 devices every 100 ms, 20 stops
    .venv/bin/python -m bench.agent_stop --devices 10 --poll-s 0.001 --stops 50
    .venv/bin/python -m bench.agent_stop --quick               # 40 devices, 3 stops: a smoke run

The poles are ``firmware-sim run-site`` (one process, 40 Modbus TCP servers; several devices
share a server, each with its own connection), the agent is ``edge-agent run`` on a private
Mosquitto. Each round starts the agent, lets it poll for ``--run-s``, sends SIGINT or SIGTERM
(alternately) and measures the time to the process's exit; the table shows each stop's
figures from the agent's ``agent stopped`` log line. Nothing is asserted, but a stop that
does not end within 15 s is killed and shown as such. The short, asserted version of this is
``tests/integration/test_agent_stop.py``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench._servers import AgentProcess, console, machine, print_table, private_servers

SERVERS = 40
KILL_AFTER_S = 15.0


def _site(tmp: Path, mqtt_port: int) -> tuple[subprocess.Popen[bytes], list[dict[str, Any]]]:
    scenario = tmp / "site.yaml"
    sims = [
        {"name": f"pole-{i}", "kind": "smart_pole_tcp", "port": 0, "tick_s": 1.0}
        for i in range(SERVERS)
    ]
    scenario.write_text(yaml.safe_dump({"agent_id": "soak", "sims": sims}))
    agent_yaml = tmp / "site-agent.yaml"
    site = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("firmware-sim")),
            "run-site",
            str(scenario),
            "--agent-config",
            str(agent_yaml),
            "--mqtt-port",
            str(mqtt_port),
            "--control",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert site.stdout is not None
    for line in site.stdout:
        if line.startswith(b"control: "):
            break
    return site, yaml.safe_load(agent_yaml.read_text())["devices"]


def _stopped(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"agent stopped"' in line:
            entry: dict[str, Any] = json.loads(line)
            return entry
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=400)
    parser.add_argument("--poll-s", type=float, default=0.1)
    parser.add_argument("--stops", type=int, default=20)
    parser.add_argument("--run-s", type=float, default=3.0, help="polling before each stop")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.stops, args.run_s = 40, 3, 2.0
    rows: list[list[str]] = []
    took: list[float] = []
    with private_servers() as servers:
        site, poles = _site(servers.tmp, servers.mosquitto.port)
        try:
            devices = [
                {
                    **poles[i % len(poles)],
                    "device_id": f"dev-{i:04d}",
                    "poll_interval_s": args.poll_s,
                    "report_on_change": False,
                }
                for i in range(args.devices)
            ]
            config = {
                "agent_id": "soak",
                "mqtt": {"host": "127.0.0.1", "port": servers.mosquitto.port},
                "devices": devices,
                "data_dir": str(servers.tmp / "agent"),
                "log_format": "json",
            }
            agent = AgentProcess(config, servers.tmp / "agent-run")
            for round_ in range(args.stops):
                agent.start()
                time.sleep(args.run_s)  # the load itself
                assert agent.process is not None
                sig = signal.SIGINT if round_ % 2 == 0 else signal.SIGTERM
                started = time.monotonic()
                agent.process.send_signal(sig)
                try:
                    code: int | str = agent.process.wait(KILL_AFTER_S)
                except subprocess.TimeoutExpired:
                    agent.process.kill()
                    agent.process.wait()
                    code = "KILLED"
                seconds = time.monotonic() - started
                took.append(seconds)
                agent.process = None
                info = _stopped(agent.log_path)
                rows.append(
                    [
                        str(round_ + 1),
                        sig.name,
                        f"{seconds:.2f}",
                        str(code),
                        str(info.get("stop_s", "-")),
                        str(info.get("readings_spooled", "-")),
                        str(info.get("tasks_not_stopped", "-")),
                    ]
                )
        finally:
            site.send_signal(signal.SIGINT)
            site.wait(30)
    print_table(
        f"edge-agent stops: {args.devices} devices every {args.poll_s} s ({machine()})",
        ["stop", "signal", "exit s", "status", "stop_s", "spooled", "not stopped"],
        rows,
        note=f"exit: max {max(took):.2f} s, median {statistics.median(took):.2f} s",
    )
    console.print("done")


if __name__ == "__main__":
    main()
