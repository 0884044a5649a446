"""systemd's notify protocol, read from a real datagram socket as systemd would."""

from __future__ import annotations

import os
import socket

from esxi_watcher import sdnotify


def _listen(address: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(5)
    return listener


def test_fields_arrive_as_key_value_lines(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with _listen(path) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify(READY="1", status="idle: 0 registered") is True
        assert listener.recv(4096).decode() == "READY=1\nSTATUS=idle: 0 registered"


def test_abstract_socket_addresses_work(monkeypatch):
    name = f"esxi-watcher-test-{os.getpid()}"
    with _listen("\0" + name) as listener:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify(WATCHDOG="1")
        assert listener.recv(4096) == b"WATCHDOG=1"


def test_without_systemd_nothing_is_sent_and_nothing_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify(READY="1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.notify(READY="1") is False


def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sdnotify.watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_USEC")
    assert sdnotify.watchdog_interval() is None
