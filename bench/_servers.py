"""Shared helpers of the benchmarks: private servers, an agent subprocess, process statistics.

The servers are the integration-test harness's (``tests.harness``): a private Mosquitto and a
private InfluxDB on free ports, in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from tests.harness import InfluxdbServer, MosquittoServer, free_port

__all__ = [
    "REPO",
    "AgentProcess",
    "ProcStats",
    "Servers",
    "console",
    "free_port",
    "machine",
    "print_table",
    "private_servers",
]

REPO = Path(__file__).resolve().parent.parent
console = Console(width=120)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Servers:
    tmp: Path
    mosquitto: MosquittoServer
    influxdb: InfluxdbServer | None


@contextlib.contextmanager
def private_servers(*, influxdb: bool = False) -> Iterator[Servers]:
    """A private Mosquitto (and InfluxDB) in a temporary directory; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp_name:
        tmp = Path(tmp_name)
        broker = MosquittoServer(tmp / "mosquitto")
        broker.start()
        influx = None
        try:
            if influxdb:
                influx = InfluxdbServer(tmp / "influxdb")
                influx.start()
            yield Servers(tmp, broker, influx)
        finally:
            if influx is not None:
                influx.stop()
            broker.stop()


@dataclass(frozen=True)
class ProcStats:
    """CPU seconds (user + system) and resident memory of a process, from /proc."""

    cpu_s: float
    rss_bytes: int

    @classmethod
    def of(cls, pid: int) -> ProcStats:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return cls((utime + stime) / _CLK_TCK, pages * _PAGE)


class AgentProcess:
    """``edge-agent run --config <yaml>`` as a subprocess, stopped with SIGINT (Ctrl-C)."""

    def __init__(self, config: dict[str, Any], directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = directory / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        exe = Path(sys.executable).with_name("edge-agent")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(exe), "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def stop(self, timeout: float = 10.0) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait()

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> AgentProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {sys.version.split()[0]}, "
        f"load average {load} at start, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def print_table(
    title: str, columns: list[str], rows: list[list[str]], note: str = "", *, left: int = 1
) -> None:
    """A rich table; the first ``left`` columns are text, the others right-aligned figures."""
    table = Table(title=title, title_justify="left", caption=note or None, caption_justify="left")
    for index, column in enumerate(columns):
        table.add_column(column, justify="left" if index < left else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
