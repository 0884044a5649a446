"""Signals, as the daemon takes them: SIGTERM/SIGINT/SIGQUIT stop it, SIGHUP reloads the
configuration, and the signals whose default action would kill it (orphaning a running build) are
noted and ignored.

Handlers only note a signal; the main loop acts on it (logging inside a handler is not safe).
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Callable

import structlog

from esxi_watcher.config import Config, load_config, reloaded
from esxi_watcher.errors import ConfigError

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IGNORED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)


class SignalInbox:
    """The signals noted since the main loop last looked."""

    def __init__(self, stop: Callable[[], None], wake: Callable[[], None]):
        self._stop = stop
        self._wake = wake
        self._noted: list[int] = []

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in STOP_SIGNALS:
            signal.signal(number, lambda *_: self._stop())
        for number in (signal.SIGHUP, *IGNORED_SIGNALS):
            signal.signal(number, self._note)
        # Python runs handlers in the main thread only, and only once it is back from a blocking
        # wait; the kernel may hand the signal to any thread. The wakeup fd wakes the main loop.
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=self._relay, args=(read_end,), name="signal-relay", daemon=True).start()

    def _note(self, number: int, _frame) -> None:
        self._noted.append(number)

    def _relay(self, read_end: int) -> None:
        while os.read(read_end, 64):
            self._wake()

    def take(self) -> list[int]:
        """Return the signals that need acting on (SIGHUP), logging the ignored ones."""
        taken = []
        while self._noted:
            number = self._noted.pop(0)
            if number == signal.SIGHUP:
                taken.append(number)
            else:
                log.warning("signal.ignored", signal=signal.Signals(number).name,
                            reason="only SIGTERM, SIGINT or SIGQUIT stop the daemon; SIGHUP reloads")
        return taken


def reload_config(path, running: Config) -> Config | None:
    """Given the configuration file and the configuration in use, return what applies from now on
    (None, logged, when the file is not valid: the running one stays)."""
    from esxi_watcher.logs import configure_logging

    try:
        loaded = load_config(path)
    except ConfigError as error:
        log.error("config.reload_failed", error=str(error), keeping="the configuration loaded before")
        return None
    new, kept, changed = reloaded(running, loaded)
    if kept:
        log.warning("config.restart_needed", keys=kept,
                    reason="these keys change only when the daemon restarts: keeping the old values")
    log.info("config.reloaded", changed=changed)  # before a new log level could hide it
    log_notices(new)
    if new.log != running.log:
        configure_logging(new.log.format, new.log.level)
    return new


def log_notices(config: Config) -> None:
    for notice in config.notices:
        log.warning("config.key_not_used", notice=notice)
