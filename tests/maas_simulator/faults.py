"""Faults the simulator can be told to produce, from Python or over HTTP.

kinds:
- "status": answer the next `count` matching calls with `status` (500/502/503/401/403...)
  before MAAS sees them (as a proxy or a failing region would); the body is `body`, sent as
  `content_type` (e.g. application/json for another service's JSON).
- "drop": on the next matching call (default: an upload PUT) read `after_bytes` bytes of
  the body, then close the socket without an answer. `appended` says what the region
  kept: "none" (nothing reached the handler), "received" (the bytes read so far reached
  the disk but not the database: a partial chunk), "all" (the whole chunk was processed
  and committed; only the answer was lost).
- "delay": sleep `seconds` before handling the next `count` matching calls.
- "no_space": the next matching upload finds the disk full.
- "echo": answer the next `count` matching calls with `status` and a body that repeats the
  request line (path and query) and its Authorization header, as a badly configured proxy's
  error page does; `body`, if given, comes first.
Matching: `method` (e.g. "PUT") and `path` (a substring of the request path), if given.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field

KINDS = ("status", "drop", "delay", "no_space", "echo")
APPENDED_CHOICES = ("none", "received", "all")


@dataclass
class Fault:
    kind: str
    count: int = 1
    status: int = 503
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"
    method: str | None = None
    path: str | None = None
    after_bytes: int = 0
    appended: str = "none"
    seconds: float = 0.0
    fired: int = field(default=0)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError("fault kind must be one of %s, not %r" % (KINDS, self.kind))
        if self.appended not in APPENDED_CHOICES:
            raise ValueError("appended must be one of %s" % (APPENDED_CHOICES,))
        if self.count < 1:
            raise ValueError("count must be at least 1")
        if self.kind in ("drop", "no_space") and self.path is None:
            self.path = "/upload/"
        if self.kind == "drop" and self.method is None:
            self.method = "PUT"
        if self.kind == "status" and not self.body:
            self.body = "Injected fault: HTTP %d" % self.status

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method.upper()) and (
            self.path is None or self.path in path)

    def as_dict(self) -> dict:
        return asdict(self)


class FaultPlan:
    """The faults still to fire, consumed in the order they were added."""

    def __init__(self):
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, kind: str, method: str, path: str) -> Fault | None:
        """Return the first pending fault of that kind matching the call, consuming one."""
        with self._lock:
            for fault in self._faults:
                if fault.kind == kind and fault.matches(method, path):
                    fault.count -= 1
                    fault.fired += 1
                    if fault.count == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def pending(self) -> list[dict]:
        with self._lock:
            return [fault.as_dict() for fault in self._faults]
