"""The HTTP side: a threaded stdlib server answering under /MAAS/ like a region does."""

from __future__ import annotations

import json
import os
import socket
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .describe import describe_document
from .faults import Fault
from .filestores import ImageUnavailable
from .oauth import AuthFailure, check_request
from .store import ApiError

API = "/MAAS/api/2.0/"
CONTROL = "/MAAS/_sim/"


class UploadBody:
    """A chunk PUT's bytes: up to IN_MEMORY held in memory, beyond that in an unnamed file of the
    state dir, so that neither a 64 MiB chunk nor a single multi-GiB PUT is held whole."""

    IN_MEMORY = 16 << 20

    def __init__(self, directory):
        self.directory = str(directory)
        self.buffer = bytearray()
        self.descriptor = None
        self.length = 0

    def append(self, data) -> None:
        self.length += len(data)
        if self.descriptor is None and len(self.buffer) + len(data) <= self.IN_MEMORY:
            self.buffer += data
            return
        if self.descriptor is None:
            self.descriptor = os.open(self.directory, os.O_TMPFILE | os.O_RDWR, 0o600)
            self._write_all(self.buffer)
            self.buffer = bytearray()
        self._write_all(data)

    def _write_all(self, data) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.descriptor, view):]

    def __len__(self) -> int:
        return self.length

    def write_to(self, stream) -> None:
        """Write the whole body to a binary stream."""
        if self.descriptor is None:
            stream.write(self.buffer)
            return
        block = bytearray(1 << 20)
        offset = 0
        while offset < self.length:
            got = os.preadv(self.descriptor, [block], offset)
            if not got:
                break
            stream.write(memoryview(block)[:got])
            offset += got

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)
            self.descriptor = None


class RegionHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, simulator):
        self.simulator = simulator
        self.open_connections: set[socket.socket] = set()
        super().__init__(address, RegionRequestHandler)

    def close_open_connections(self) -> None:
        for connection in list(self.open_connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class DroppedConnection(Exception):
    """The connection is to be closed without an answer."""


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """Given a POST body (multipart/form-data or urlencoded), return its fields."""
    if content_type.startswith("multipart/"):
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
        fields = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name is None:
                continue
            payload = part.get_payload(decode=True) or b""
            fields[name] = payload.decode("utf-8")
        return fields
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {key: values[-1] for key, values in
                parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    return {}


class RegionRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MAAS-simulator"
    sys_version = ""

    # -- plumbing ------------------------------------------------------------------------
    def setup(self):
        super().setup()
        self.server.open_connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.open_connections.discard(self.connection)

    def log_message(self, format, *args):  # noqa: A002 - quiet, the simulator logs requests
        pass

    @property
    def simulator(self):
        return self.server.simulator

    def do_GET(self):
        self.handle_call()

    def do_POST(self):
        self.handle_call()

    def do_PUT(self):
        self.handle_call()

    def do_DELETE(self):
        self.handle_call()

    def read_body(self, limit: int | None = None) -> tuple[int, bytes]:
        """Return (Content-Length as sent, bytes received), reading at most `limit` bytes."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return 0, self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)
        wanted = length if limit is None else min(length, limit)
        received = bytearray()
        while len(received) < wanted:
            block = self.rfile.read(min(wanted - len(received), 1 << 20))
            if not block:
                self.close_connection = True
                break
            received += block
        return length, bytes(received)

    def read_upload_body(self) -> tuple[int, "UploadBody"]:
        """Like read_body, for a chunk PUT: the body goes to disk as it comes (an upload can be GiBs)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = UploadBody(self.simulator.state_dir)
            body.append(self._read_chunked(None))
            return 0, body
        length = int(self.headers.get("Content-Length") or 0)
        body = UploadBody(self.simulator.state_dir)
        block = bytearray(1 << 20)
        view = memoryview(block)
        while len(body) < length:
            got = self.rfile.readinto(view[: min(length - len(body), len(block))])
            if not got:
                self.close_connection = True
                break
            body.append(view[:got])
        return length, body

    def _read_chunked(self, limit: int | None) -> bytes:
        received = bytearray()
        while limit is None or len(received) < limit:
            size_line = self.rfile.readline()
            if not size_line:
                break
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                break
            received += self.rfile.read(size)
            self.rfile.readline()
        return bytes(received if limit is None else received[:limit])

    def answer(self, status: int, body=b"", content_type="text/plain; charset=utf-8",
               headers=None) -> None:
        if isinstance(body, str):
            body = body.encode("utf-8")
        self.status_sent = status
        self.log_call()  # before the answer leaves, so a client that has it sees it logged
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)) if status != 204 else "0")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body and status != 204:
            self.wfile.write(body)

    def answer_json(self, status: int, data) -> None:
        self.answer(status, json.dumps(data), "application/json; charset=utf-8")

    # -- a call --------------------------------------------------------------------------
    def log_call(self) -> None:
        if not self.logged and self.call is not None:
            self.logged = True
            method, path, query = self.call
            self.simulator.log_request(method, path, query, self.status_sent, self.body_length)

    def handle_call(self):
        self.status_sent = None
        self.logged = False
        self.call = None
        self.body_length = 0
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        if path.startswith(CONTROL):
            self.handle_control(path[len(CONTROL):], query)
            return
        faults = self.simulator.faults
        self.call = (self.command, path, split.query)
        body = b""
        try:
            while (delay := faults.take("delay", self.command, path)) is not None:
                time.sleep(delay.seconds)
            drop = faults.take("drop", self.command, path)
            if drop is not None:
                self.drop_connection(drop, path)
            if self.command == "PUT" and "/upload/" in path:
                length, body = self.read_upload_body()
            else:
                length, body = self.read_body()
            self.body_length = len(body)
            echo = faults.take("echo", self.command, path)
            if echo is not None:
                self.answer(echo.status, self.echoed(echo, split.query), echo.content_type)
                return
            status_fault = faults.take("status", self.command, path)
            if status_fault is not None:
                headers = {}
                if status_fault.status == 401:
                    headers["WWW-Authenticate"] = 'OAuth realm="OAuth"'
                self.answer(status_fault.status, status_fault.body, status_fault.content_type, headers=headers)
                return
            self.route(path, query, length, body)
        except DroppedConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        finally:
            self.log_call()
            if isinstance(body, UploadBody):
                body.close()

    def echoed(self, echo: Fault, query: str) -> str:
        """A proxy's error page that shows what it received, credentials included."""
        target = self.path if not query else "%s (query: %s)" % (self.path, query)
        lines = [echo.body] if echo.body else []
        lines += ["Request: %s %s" % (self.command, target),
                  "Authorization: %s" % self.headers.get("Authorization", "(none)")]
        return "\n".join(lines)

    def drop_connection(self, drop: Fault, path: str) -> None:
        """Read part (or all) of the body, keep what the region would have kept, hang up."""
        if drop.appended == "all":
            length, body = self.read_body()
            self.body_length = len(body)
            try:
                self.route(path, {}, length, body, send=False)
            except ApiError:
                pass
            raise DroppedConnection()
        _, received = self.read_body(limit=drop.after_bytes)
        self.body_length = len(received)
        if drop.appended == "received" and received:
            try:
                self.authenticate()
                resource_id, file_id = self.upload_ids(path)
                self.simulator.store.check_upload_target(resource_id, file_id)
                self.simulator.store.write_unrecorded(file_id, received)
            except (ApiError, AuthFailure, ValueError):
                pass
        raise DroppedConnection()

    def authenticate(self) -> None:
        check_request(self.headers.get("Authorization"), self.simulator.credentials,
                      self.simulator.nonces)

    @staticmethod
    def upload_ids(path: str) -> tuple[str, str]:
        parts = path[len(API):].strip("/").split("/")
        if len(parts) == 4 and parts[0] == "boot-resources" and parts[2] == "upload":
            return parts[1], parts[3]
        raise ValueError("not an upload URI")

    def route(self, path: str, query: dict, length: int, body: bytes, send: bool = True):
        """Answer one API call; with send=False, process it and answer nothing."""
        reply = self.answer if send else (lambda *args, **kwargs: None)
        reply_json = self.answer_json if send else (lambda *args, **kwargs: None)
        if not path.startswith(API):
            return reply(404, "Not Found")
        endpoint = path[len(API):]
        if endpoint == "describe/" and self.command == "GET":
            host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
            return self.answer(200, json.dumps(describe_document("http://" + host)),
                               "application/json") if send else None
        if endpoint == "version/" and self.command == "GET":
            return reply_json(200, self.simulator.version_document())
        try:
            self.authenticate()
        except AuthFailure as failure:
            return reply(failure.status, failure.message,
                         headers={"WWW-Authenticate": 'OAuth realm="OAuth"'})
        try:
            self.route_authenticated(endpoint, query, length, body, reply, reply_json)
        except ApiError as error:
            reply(error.status, error.body, error.content_type)
        except Exception as error:  # noqa: BLE001 - a region answers 500 on a crash too
            self.simulator.log_crash(error)
            reply(500, "%s: %s" % (type(error).__name__, error))

    def route_authenticated(self, endpoint, query, length, body, reply, reply_json):
        """Answer an authenticated call (the op-less CRUD actions we model)."""
        store = self.simulator.store
        method = self.command
        op = query.get("op", [None])[-1]
        parts = endpoint.strip("/").split("/")
        known_ops = {("POST", "notifications", 2, "dismiss"), ("GET", "users", 1, "whoami")}
        if op is not None and (method, parts[0], len(parts), op) not in known_ops:
            raise ApiError(400, "Unrecognised signature: method=%s op=%s" % (method, op))
        form = lambda: parse_form(self.headers.get("Content-Type", ""), body)  # noqa: E731
        if parts == ["users"] and op == "whoami":
            return reply_json(200, self.simulator.whoami())
        if parts == ["boot-resources"]:
            if method == "GET":
                return reply_json(200, store.list_resources(query.get("type", [None])[-1]))
            if method == "POST":
                self.admin_only()
                return reply_json(201, store.create_resource(form()))
        elif parts[0] == "boot-resources" and len(parts) == 2:
            if method == "GET":
                return reply_json(200, store.read_resource(parts[1]))
            if method == "DELETE":
                self.admin_only()
                store.delete_resource(parts[1])
                return reply(204)
        elif parts[0] == "boot-resources" and len(parts) == 4 and parts[2] == "upload":
            if method == "PUT":
                no_space = self.simulator.faults.take("no_space", method, "/" + endpoint) is not None
                store.upload_chunk(parts[1], parts[3], length, body, no_space=no_space)
                return reply(200, "OK")
        elif parts == ["notifications"]:
            if method == "POST":
                return reply_json(200, store.create_notification(form()))
            if method == "GET":
                return reply_json(200, store.list_notifications())
        elif parts[0] == "notifications" and len(parts) == 2:
            if op == "dismiss":
                store.dismiss_notification(parts[1])
                return reply(200, "")
            if method == "GET":
                return reply_json(200, store.read_notification(parts[1]))
            if method == "PUT":
                return reply_json(200, store.update_notification(parts[1], form()))
            if method == "DELETE":
                store.delete_notification(parts[1])
                return reply(204)
        else:
            raise ApiError(404, "Not Found")
        raise ApiError(405, "Method not allowed", "text/plain; charset=utf-8")

    def admin_only(self) -> None:
        """MAAS's @admin_method (src/maasserver/api/support.py, 3.4 to 3.7; 3.8's
        CAN_EDIT_BOOT_ENTITIES entitlement gives admins the same): a non-admin's key gets 403."""
        if not self.simulator.admin:
            raise ApiError(403, "This method is reserved for admin users.")

    # -- control endpoints ---------------------------------------------------------------
    def handle_control(self, endpoint: str, query: dict) -> None:
        _, body = self.read_body()
        simulator = self.simulator
        try:
            request = json.loads(body) if body.strip() else {}
            if endpoint == "faults" and self.command == "POST":
                simulator.inject(**request)
                return self.answer_json(201, {"faults": simulator.faults.pending()})
            if endpoint == "faults" and self.command == "DELETE":
                simulator.clear_faults()
                return self.answer(204)
            if endpoint == "faults" and self.command == "GET":
                return self.answer_json(200, {"faults": simulator.faults.pending()})
            if endpoint == "state" and self.command == "GET":
                return self.answer_json(200, simulator.state_document())
            if endpoint == "refuse" and self.command == "POST":
                self.answer_json(202, {"refusing_for": float(request.get("seconds", 1.0))})
                simulator.refuse_connections_later(float(request.get("seconds", 1.0)))
                return None
            if endpoint == "restart" and self.command == "POST":
                self.answer_json(202, {"restarting": True})
                simulator.refuse_connections_later(0.0)
                return None
            if endpoint == "file-bytes" and self.command == "GET":
                name = query.get("name", [""])[-1]
                architecture = query.get("architecture", ["amd64/generic"])[-1]
                try:
                    content = simulator.file_bytes(name, architecture)
                except ImageUnavailable as error:
                    return self.answer(404, str(error))
                return self.answer(200, content, "application/octet-stream")
            return self.answer(404, "unknown control endpoint")
        except (TypeError, ValueError) as error:
            return self.answer(400, str(error))
