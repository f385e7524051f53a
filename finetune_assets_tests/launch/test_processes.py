"""Servers started and stopped by PID: readiness by port, the whole process group stopped, a reused PID left
alone, a server that dies while starting reported with its log."""

import json
import socket
import sys

import pytest

from finetune_assets.launch import processes
from finetune_assets.launch.processes import ProcessStartError, Server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A server that listens on a port and starts a child of its own (the group stop must take both).
SERVER_CODE = """
import socket, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print("child", child.pid, flush=True)
sock = socket.socket(); sock.bind(("127.0.0.1", int(sys.argv[1]))); sock.listen()
time.sleep(600)
"""


def listening_server(port: int) -> Server:
    return Server("echo", [sys.executable, "-c", SERVER_CODE, str(port)], ready_port=port, stop_timeout_s=10)


def test_start_waits_for_the_port_and_stop_ends_the_whole_group(tmp_path):
    port = free_port()
    pid = processes.start(listening_server(port), tmp_path)
    assert processes.port_open(port)
    assert processes.running_pid(tmp_path, "echo") == pid
    members = processes.group_members(pid)
    assert len(members) == 2 and pid in members  # the server and its child
    # a second start finds it running and starts nothing
    assert processes.start(listening_server(port), tmp_path) == pid

    assert processes.stop(tmp_path, listening_server(port)) is True
    assert processes.group_members(pid) == []
    assert not processes.port_open(port)
    assert not processes.pid_file(tmp_path, "echo").exists()
    assert processes.stop(tmp_path, listening_server(port)) is False  # nothing left to stop


def test_a_reused_pid_is_not_taken_for_the_server(tmp_path):
    port = free_port()
    pid = processes.start(listening_server(port), tmp_path)
    record = processes.pid_file(tmp_path, "echo")
    info = json.loads(record.read_text())
    record.write_text(json.dumps({**info, "start_ticks": info["start_ticks"] - 1}))  # another process's
    try:
        assert processes.running_pid(tmp_path, "echo") is None
        assert processes.stop(tmp_path, listening_server(port)) is False
        assert processes.group_members(pid)  # left alone
    finally:
        record.write_text(json.dumps(info))
        processes.stop(tmp_path, listening_server(port))


def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path):
    crash = Server("crash", [sys.executable, "-c", "print('bad config: port missing'); raise SystemExit(3)"],
                   ready_port=free_port())  # fmt: skip
    with pytest.raises(ProcessStartError, match=r"(?s)crash exited with code 3.*bad config: port missing"):
        processes.start(crash, tmp_path)
    assert not processes.pid_file(tmp_path, "crash").exists()
