"""Long-running local server processes that this project starts and stops by PID, never by name.

Each process runs in its own session (process group) with its output in a log file; a pid file records the PID
and the command line, so ``stop`` signals exactly the group it started, and a PID that the system has since reused
for another program is left alone. Used by launch.stack for the production layout on 127.0.0.1.
"""

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ProcessStartError(RuntimeError):
    """A server did not become ready; the message names it and ends with the tail of its log."""


@dataclass(frozen=True)
class Server:
    """One server: its command, environment additions, and how to tell it is ready.

    ``ready_port``: ready once 127.0.0.1:port accepts a connection (None: ready once it has stayed up
    ``settle_s`` seconds). ``stop_signal``: what asks it to shut down cleanly (Postgres: SIGINT, a fast
    shutdown that does not wait for clients).
    """

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_port: int | None = None
    ready_timeout_s: float = 120.0
    settle_s: float = 3.0
    stop_signal: int = signal.SIGTERM
    cwd: str | None = None
    # Ray's `ray start --block` stops its own children in order on a signal (drain, then GCS last): signal the
    # leader only and the group when the grace period ends; others get the group signal at once.
    signal_leader_only: bool = False
    stop_timeout_s: float = 30.0


def pid_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "pids" / f"{name}.json"


def log_file(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / "logs" / f"{name}.log"


def start(server: Server, run_dir: Path) -> int:
    """Start ``server`` unless its recorded process is alive; wait until ready. Returns its PID."""
    alive = running_pid(run_dir, server.name)
    if alive is not None:
        return alive
    log = log_file(run_dir, server.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            server.argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server.env},
            cwd=server.cwd,
            start_new_session=True,  # its own process group: stop() signals the group, nothing else
        )
    record = pid_file(run_dir, server.name)
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    info = {
        "pid": proc.pid,
        "argv": server.argv,
        "start_ticks": _start_ticks(proc.pid),
        "started": time.time(),
    }
    tmp.write_text(json.dumps(info))
    tmp.replace(record)
    try:
        _wait_ready(server, proc, log)
    except ProcessStartError:
        if proc.poll() is not None:
            record.unlink(missing_ok=True)  # nothing runs: no record (a hung one stays recorded, to stop it)
        raise
    return proc.pid


def _wait_ready(server: Server, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + server.ready_timeout_s
    settled_at = time.monotonic() + server.settle_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessStartError(
                f"{server.name} exited with code {proc.returncode} while starting; {_tail(log)}"
            )
        if server.ready_port is not None and port_open(server.ready_port):
            return
        if server.ready_port is None and time.monotonic() >= settled_at:
            return
        time.sleep(0.5)
    raise ProcessStartError(
        f"{server.name} was not ready on 127.0.0.1:{server.ready_port} after {server.ready_timeout_s:.0f} s; "
        f"{_tail(log)}"
    )


def _tail(log: Path, lines: int = 15) -> str:
    text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
    return f"last lines of {log}:\n" + "\n".join(text)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def running_pid(run_dir: Path, name: str) -> int | None:
    """The recorded PID when that process is alive and still runs the recorded command, else None."""
    record = pid_file(run_dir, name)
    if not record.exists():
        return None
    info = json.loads(record.read_text())
    pid = int(info["pid"])
    # the PID may have been reused by another program since: the kernel's start time of the process tells
    ticks = info.get("start_ticks")
    return pid if ticks is not None and _start_ticks(pid) == ticks else None


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def stop(run_dir: Path, server: Server) -> bool:
    """Stop the recorded process group of ``server`` (its stop signal, then SIGKILL to the group after its
    grace period). Returns True when something was stopped. Removes the pid file."""
    pid = running_pid(run_dir, server.name)
    record = pid_file(run_dir, server.name)
    if pid is None:
        record.unlink(missing_ok=True)
        return False
    if server.signal_leader_only:
        os.kill(pid, server.stop_signal)
    else:
        _signal_group(pid, server.stop_signal)
    deadline = time.monotonic() + server.stop_timeout_s
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.3)
    if _group_alive(pid):
        _signal_group(pid, signal.SIGKILL)
        time.sleep(0.5)
    record.unlink(missing_ok=True)
    return True


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` exists (zombies of our own children excepted)."""
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the leader when it is our child
    except ChildProcessError:
        pass
    return bool(group_members(pgid))


def live_processes():
    """(pid, parent pid, process group) of every process that is not a zombie, from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z":
            yield int(stat.parent.name), int(fields[1]), int(fields[2])


def group_members(pgid: int) -> list[int]:
    """The live PIDs of process group ``pgid`` (for status and tests)."""
    return sorted(pid for pid, _, group in live_processes() if group == pgid)


def children(parent: int) -> list[int]:
    """The live child processes of ``parent``."""
    return sorted(pid for pid, ppid, _ in live_processes() if ppid == parent)
