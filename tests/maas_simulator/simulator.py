"""MaasSimulator: start, stop, fault injection and inspection from a test."""

from __future__ import annotations

import threading
from pathlib import Path

from . import rules
from .faults import Fault, FaultPlan
from .oauth import ApiKey, NonceStore
from .server import RegionHTTPServer
from .store import RegionStore, utc_now

MODES = ("3.4", "3.5", "3.8")
DEFAULT_VERSIONS = {"3.4": "3.4.2", "3.5": "3.5.4", "3.8": "3.8.0"}
# What get_maas_version() prints on a snap or deb install: keep for libmaas parsing tests.
REALISTIC_VERSIONS = {
    "3.4": "3.4.2-14353-g.5a5221d57",
    "3.5": "3.5.4-16297-g.9f5d0d9f3",
    "3.8": "3.8.0-18020-g.d1d0a2c41",
}
VERSION_CAPABILITIES = [
    "networks-management",
    "static-ipaddresses",
    "ipv6-deployment-ubuntu",
    "devices-management",
    "storage-deployment-ubuntu",
    "network-deployment-ubuntu",
    "bridging-interface-ubuntu",
    "bridging-automatic-ubuntu",
    "authenticate-api",
]


class MaasSimulator:
    """A MAAS region's boot-resource API on 127.0.0.1, following MAAS's own rules.

    mode: "3.8" (default; shared append-only file per sha256), "3.5" (3.5 to 3.7:
    per-upload .incomplete file), "3.4" (large objects). version: the string
    /version/ reports (default per mode; realistic=True picks a "3.x.y-NNNNN-g.hash" form).
    clock: a callable returning an aware UTC datetime, for set versions.
    admin: whether the key belongs to a MAAS admin; a non-admin's key authenticates but may not
    create or delete boot resources.
    """

    def __init__(self, state_dir, mode: str = "3.8", api_key: str | None = None,
                 host: str = "127.0.0.1", port: int = 0, version: str | None = None,
                 realistic_version: bool = False, clock=utc_now,
                 synced_names=rules.DEFAULT_SYNCED_NAMES,
                 architectures=rules.DEFAULT_ARCHITECTURES, admin: bool = True):
        if mode not in MODES:
            raise ValueError("mode must be one of %s, not %r" % (MODES, mode))
        self.state_dir = Path(state_dir)
        self.mode = mode
        self.admin = admin
        self.host = host
        self.port = port
        self.version = version or (REALISTIC_VERSIONS if realistic_version else DEFAULT_VERSIONS)[mode]
        self._requested_key = ApiKey.parse(api_key) if api_key else None
        self.store = RegionStore(self.state_dir, mode, clock=clock, synced_names=synced_names,
                                 architectures=architectures)
        self.faults = FaultPlan()
        self.nonces = NonceStore()
        self.requests: list[dict] = []
        self.crashes: list[str] = []
        self._requests_lock = threading.Lock()
        self._server: RegionHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._api_key: ApiKey | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> "MaasSimulator":
        """Load the state (a region restart: orphaned files go) and listen."""
        with self._lifecycle:
            if self._server is not None:
                return self
            self._api_key = self.store.load(self._requested_key or self._api_key)
            self.nonces = NonceStore(self.store.data.get("nonces"))
            self._server = RegionHTTPServer((self.host, self.port), self)
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name="maas-simulator-%d" % self.port, daemon=True)
            self._thread.start()
            return self

    def stop(self) -> None:
        """Stop listening and cut open connections; the state stays on disk."""
        with self._lifecycle:
            server, self._server = self._server, None
            if server is None:
                return
            server.shutdown()
            server.close_open_connections()
            server.server_close()
            self._thread.join(timeout=5)
            with self.store.lock:
                self.store.data["nonces"] = self.nonces.snapshot()
                self.store.save()

    def restart(self) -> None:
        self.stop()
        self.start()

    def refuse_connections_later(self, seconds: float) -> None:
        """From a request thread: stop listening for `seconds`, then start again."""

        def outage():
            self.stop()
            threading.Event().wait(seconds)
            self.start()

        threading.Thread(target=outage, daemon=True).start()

    def __enter__(self) -> "MaasSimulator":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return "http://%s:%d/MAAS/" % (self.host, self.port)

    @property
    def api_key(self) -> str:
        if self._api_key is None:
            raise RuntimeError("start the simulator first: the key comes with its state")
        return str(self._api_key)

    @property
    def credentials(self) -> ApiKey:
        return self._api_key

    def log_crash(self, error: Exception) -> None:
        """A handler crashed (a 500): keep it where a test can see it."""
        self.crashes.append("%s: %s" % (type(error).__name__, error))

    # -- faults ----------------------------------------------------------------------------
    def inject(self, kind: str, **details) -> Fault:
        """Queue a fault (see tests.maas_simulator.faults for kinds and fields)."""
        return self.faults.add(Fault(kind=kind, **details))

    def clear_faults(self) -> None:
        self.faults.clear()

    # -- what machines do ------------------------------------------------------------------
    def mark_deployed(self, name: str, when=None, architecture: str = "amd64/generic") -> int:
        """A machine deployed `name` on `architecture` at `when` (an aware datetime, default now):
        the boot resources of that name report it as last_deployed. Return how many were marked."""
        return self.store.mark_deployed(name, architecture, when or self.store.clock())

    # -- inspection ------------------------------------------------------------------------
    def log_request(self, method: str, path: str, query: str, status, bytes_in: int) -> None:
        if path.startswith("/MAAS/_sim/"):
            return
        with self._requests_lock:
            self.requests.append({"method": method, "path": path, "query": query,
                                  "status": status, "bytes": bytes_in})

    def version_document(self) -> dict:
        return {"capabilities": VERSION_CAPABILITIES, "version": self.version, "subversion": ""}

    def whoami(self) -> dict:
        """The key's user as MAAS's `GET users/?op=whoami` answers it (UserHandler's fields)."""
        username = "admin" if self.admin else "operator"
        return {"username": username, "email": "%s@example.com" % username, "is_local": True,
                "is_superuser": self.admin, "resource_uri": "/MAAS/api/2.0/users/%s/" % username}

    def resources(self) -> list[dict]:
        """Every boot resource as MAAS reads it back (with sets and files)."""
        with self.store.lock:
            return [self.store.resource_to_dict(resource, with_sets=True)
                    for resource in self.store.data["resources"]]

    def file_bytes(self, name: str, architecture: str = "amd64/generic") -> bytes:
        """The bytes MAAS would serve for the newest complete set of that resource.

        Raises filestores.ImageUnavailable if none is complete or the bytes are gone.
        """
        return self.store.file_bytes(name, architecture)

    def notifications(self) -> list[dict]:
        with self.store.lock:
            return [dict(notification) for notification in self.store.data["notifications"]]

    def disk_files(self) -> dict[str, int]:
        """Files in the region's image store (or large objects), name -> size."""
        return self.store.files_store.disk_files()

    def state_document(self) -> dict:
        with self._requests_lock:
            requests = list(self.requests)
        return {
            "mode": self.mode,
            "version": self.version,
            "url": self.url,
            "resources": self.resources(),
            "notifications": self.notifications(),
            "disk_files": self.disk_files(),
            "removed_on_restart": list(self.store.removed_on_restart),
            "faults": self.faults.pending(),
            "requests": requests,
            "crashes": list(self.crashes),
        }
