"""A managed server subprocess: start, wait until a probe says ready, stop.

* stdout/stderr go to a log file (appended across restarts); errors include its tail
  (plus the tail of any extra log files, e.g. the server's own ``log_dest file``).
* readiness is probed in a loop (short poll interval, overall timeout) - no fixed sleeps.
* ``stop()`` sends SIGTERM, waits, then SIGKILLs; every exit is reaped (no zombies).
* every live process is also SIGKILLed at interpreter exit as a last resort.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
TAIL_LINES = 40


class HarnessError(RuntimeError):
    """Base class of every error raised by the test harness."""


class BinaryNotFoundError(HarnessError):
    """A server binary is not installed."""


class ServerStartError(HarnessError):
    """A server did not become ready."""

    def __init__(self, message: str, *, address_in_use: bool = False) -> None:
        super().__init__(message)
        self.address_in_use = address_in_use


def find_binary(name: str, debian_package: str, candidates: Sequence[str] = ()) -> str:
    """Locate ``name`` on PATH or at one of ``candidates``; fail with an install hint."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BinaryNotFoundError(
        f"`{name}` not found (looked on PATH and in {', '.join(candidates) or 'nowhere else'}). "
        f"Install the Debian package `{debian_package}` (apt-get install {debian_package}); "
        "scripts/test.sh installs it for you."
    )


def tail(path: Path, lines: int = TAIL_LINES, since: int = 0) -> str:
    """Last ``lines`` lines of ``path`` (from byte offset ``since``), or a note if absent."""
    try:
        with path.open("rb") as fh:
            fh.seek(since)
            data = fh.read()
    except FileNotFoundError:
        return "<not created>"
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


def sigterm_as_keyboard_interrupt() -> None:
    """Make SIGTERM (CI job cancelled, ``timeout``) act like Ctrl-C, so pytest still runs
    fixture teardown and stops the servers. Only if SIGTERM has its default action."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"received signal {signum}")

    signal.signal(signal.SIGTERM, handler)


_live: set[ManagedProcess] = set()  # started and not yet reaped


@atexit.register
def kill_leftovers() -> None:  # pragma: no cover - last-resort safety net
    for proc in list(_live):
        with contextlib.suppress(Exception):
            proc.kill()


class ManagedProcess:
    """One long-running server process.

    ``ready`` is a cheap probe returning True once the server serves requests; it may
    raise (treated as "not yet"). The process runs in its own session so a Ctrl-C in
    the terminal does not kill it before fixtures tear it down in order.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        ready: Callable[[], bool],
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        extra_logs: Sequence[Path] = (),
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready = ready
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.extra_logs = list(extra_logs)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.stop_signal = stop_signal
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offsets: dict[Path, int] = {}
        self._lock = threading.RLock()

    # -- state -----------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def log_tail(self, lines: int = TAIL_LINES, *, current_run_only: bool = False) -> str:
        parts = []
        for path in [self.log_path, *self.extra_logs]:
            since = self._log_offsets.get(path, 0) if current_run_only else 0
            parts.append(f"--- tail of {path} ---\n{tail(path, lines, since)}")
        return "\n".join(parts)

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float | None = None) -> None:
        """Spawn the process (no-op if running) and wait until ``ready()``."""
        with self._lock:
            if self.running:
                return
            self._reap()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            for path in [self.log_path, *self.extra_logs]:
                self._log_offsets[path] = path.stat().st_size if path.exists() else 0
            with self.log_path.open("ab") as log:
                log.write(f"\n=== harness: starting {self.argv!r}\n".encode())
                log.flush()
                try:
                    self._proc = subprocess.Popen(
                        self.argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=self.cwd,
                        env=self.env,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise ServerStartError(
                        f"{self.name}: cannot execute {self.argv[0]}: {exc}"
                    ) from exc
            _live.add(self)
        self.wait_ready(self.start_timeout if timeout is None else timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            proc = self._proc
            if proc is None:
                raise ServerStartError(f"{self.name}: not started")
            code = proc.poll()
            if code is not None:
                self._raise_start_error(f"exited with code {code} before becoming ready")
            with contextlib.suppress(Exception):
                if self.ready():
                    return
            if time.monotonic() >= deadline:
                self.kill()
                self._raise_start_error(f"not ready within {timeout:.0f}s (killed it)")
            time.sleep(POLL_INTERVAL)

    def _raise_start_error(self, what: str) -> None:
        logs = self.log_tail(current_run_only=True)
        in_use = "address already in use" in logs.lower()
        raise ServerStartError(
            f"{self.name} {what}.\ncommand: {' '.join(self.argv)}\n{logs}",
            address_in_use=in_use,
        )

    def send_signal(self, sig: int) -> None:
        if self.running and self._proc is not None:
            self._proc.send_signal(sig)

    def stop(self, timeout: float | None = None, sig: int | None = None) -> None:
        """Graceful stop: ``sig`` (default ``stop_signal``, SIGTERM), wait, then SIGKILL.
        Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(self.stop_signal if sig is None else sig)
                try:
                    proc.wait(self.stop_timeout if timeout is None else timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            self._reap()

    def kill(self) -> None:
        """Hard stop (SIGKILL) - simulates a crash. Idempotent."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
            self._reap()

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            _live.discard(self)

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<ManagedProcess {self.name} {state}>"
