"""The region's database for the simulator: boot resources, sets, files, notifications.

Kept as JSON under the state dir (``state.json``, written atomically after every change)
next to the bytes the file store keeps, so a restarted simulator finds what it held.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path

from . import rules
from .filestores import ImageUnavailable, LargeObjectStore, UploadRefused, make_file_store
from .oauth import ApiKey

STATE_FILE = "state.json"
API_PREFIX = "/MAAS/api/2.0/"
TYPE_NAMES = {"synced": "Synced", "uploaded": "Uploaded"}
RTYPE_NUMBERS = {"synced": 0, "uploaded": 2}


class ApiError(Exception):
    """An answer MAAS gives instead of success: status, body text, content type."""

    def __init__(self, status: int, body, content_type: str = "text/plain; charset=utf-8"):
        super().__init__(body)
        self.status = status
        self.body = body
        self.content_type = content_type


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def django_json_time(moment: datetime) -> str:
    """Given an aware datetime, return it as DjangoJSONEncoder writes it (UTC: "...T10:00:00.123Z")."""
    text = moment.astimezone(timezone.utc).isoformat()
    if moment.microsecond:
        text = text[:23] + text[26:]
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def generate_api_key() -> ApiKey:
    """Return a key shaped like MAAS's: 18-char consumer and token keys, 32-char secret."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

    def token(length):
        return "".join(secrets.choice(alphabet) for _ in range(length))

    return ApiKey(token(18), token(18), token(32))


class RegionStore:
    """Everything the region holds, guarded by one lock (requests run in threads)."""

    def __init__(self, state_dir: Path, mode: str, clock=utc_now,
                 synced_names=rules.DEFAULT_SYNCED_NAMES,
                 architectures=rules.DEFAULT_ARCHITECTURES,
                 seed_synced: bool = True):
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.mode = mode
        self.clock = clock
        self.synced_names = tuple(synced_names)
        self.architectures = tuple(architectures)
        self.seed_synced = seed_synced
        self.lock = threading.RLock()
        self.files_store = make_file_store(mode, self.state_dir)
        self.data: dict = {}
        self.removed_on_restart: list[str] = []

    # -- persistence -------------------------------------------------------------------
    def load(self, api_key: ApiKey | None) -> ApiKey:
        """Read state.json (or start afresh), settle the API key, clean up like a restart."""
        with self.lock:
            path = self.state_dir / STATE_FILE
            if path.exists():
                self.data = json.loads(path.read_text())
                if self.data["mode"] != self.mode:
                    raise ValueError(
                        "state dir %s holds a %s region, not %s"
                        % (self.state_dir, self.data["mode"], self.mode)
                    )
            else:
                self.data = {
                    "mode": self.mode,
                    "next_id": {"resource": 1, "set": 1, "file": 1, "notification": 1},
                    "resources": [],
                    "sets": [],
                    "files": [],
                    "largefiles": {},
                    "notifications": [],
                    "nonces": {},
                    "api_key": None,
                }
                if self.seed_synced:
                    self._seed_synced_resource()
            if api_key is None:
                stored = self.data.get("api_key")
                api_key = ApiKey.parse(stored) if stored else generate_api_key()
            self.data["api_key"] = str(api_key)
            self.removed_on_restart = self.files_store.on_restart(
                self.data["files"], self.data["largefiles"]
            )
            self.save()
            return api_key

    def save(self) -> None:
        with self.lock:
            path = self.state_dir / STATE_FILE
            temporary = path.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            os.replace(temporary, path)

    def _take_id(self, kind: str) -> int:
        value = self.data["next_id"][kind]
        self.data["next_id"][kind] = value + 1
        return value

    def _seed_synced_resource(self) -> None:
        """One synced Ubuntu image, as a region that imported images.maas.io has."""
        resource = {
            "id": self._take_id("resource"), "rtype": "synced", "name": "ubuntu/noble",
            "architecture": "amd64/ga-24.04", "base_image": "",
            "extra": {"subarches": "generic,hwe-24.04,ga-24.04", "title": "Ubuntu 24.04 LTS"},
        }
        self.data["resources"].append(resource)
        rset = {"id": self._take_id("set"), "resource_id": resource["id"],
                "version": "20260101", "label": "stable"}
        self.data["sets"].append(rset)
        for filename, filetype, size in (
            ("boot-kernel", "boot-kernel", 14_000_000),
            ("boot-initrd", "boot-initrd", 60_000_000),
            ("squashfs", "squashfs", 280_000_000),
        ):
            sha256 = rules.sha256_hex(("synced:" + filename).encode())
            rfile = {"id": self._take_id("file"), "set_id": rset["id"], "filename": filename,
                     "filetype": filetype, "sha256": sha256,
                     "filename_on_disk": sha256[:7], "size": size, "sync": size}
            self.data["files"].append(rfile)
            if isinstance(self.files_store, LargeObjectStore):
                self.data["largefiles"][sha256] = {"total_size": size, "size": size}

    # -- look-ups ----------------------------------------------------------------------
    def resource(self, resource_id) -> dict:
        for resource in self.data["resources"]:
            if str(resource["id"]) == str(resource_id):
                return resource
        raise ApiError(404, "No BootResource matches the given query.")

    def rfile(self, file_id) -> dict:
        for rfile in self.data["files"]:
            if str(rfile["id"]) == str(file_id):
                return rfile
        raise ApiError(404, "No BootResourceFile matches the given query.")

    def sets_of(self, resource: dict) -> list[dict]:
        return [rset for rset in self.data["sets"] if rset["resource_id"] == resource["id"]]

    def files_of(self, rset: dict) -> list[dict]:
        return [rfile for rfile in self.data["files"] if rfile["set_id"] == rset["id"]]

    def resource_of_set(self, set_id: int) -> dict:
        return next(r for r in self.data["resources"]
                    if any(s["id"] == set_id and s["resource_id"] == r["id"] for s in self.data["sets"]))

    # -- representation (boot_resource_to_dict & co.) ------------------------------------
    def file_to_dict(self, rfile: dict, resource: dict) -> dict:
        largefiles = self.data["largefiles"]
        answer = {"filename": rfile["filename"], "filetype": rfile["filetype"],
                  "sha256": rfile["sha256"]}
        if self.mode != "3.4":
            answer["filename_on_disk"] = rfile["filename_on_disk"]
        answer["size"] = rfile["size"]
        answer["complete"] = self.files_store.is_complete(rfile, largefiles)
        if not answer["complete"]:
            answer["progress"] = self.files_store.progress(rfile, largefiles)
            if resource["rtype"] == "uploaded":
                answer["upload_uri"] = "%sboot-resources/%d/upload/%d/" % (
                    API_PREFIX, resource["id"], rfile["id"])
        return answer

    def set_state(self, rset: dict) -> tuple[int, bool, float]:
        """Return (total size, complete, progress) of a set, per the mode's rules."""
        files = self.files_of(rset)
        largefiles = self.data["largefiles"]
        total = sum(rfile["size"] for rfile in files)
        synced = sum(self.files_store.synced_size(rfile, largefiles) for rfile in files)
        if self.mode == "3.4":
            complete = bool(files) and synced == total
            progress = 0 if synced <= 0 else 100.0 * synced / float(total)
        else:
            progress = 100.0 * synced / total if total > 0 else 0.0
            complete = progress == 100.0
        return total, complete, progress

    def set_to_dict(self, rset: dict, resource: dict) -> dict:
        total, complete, progress = self.set_state(rset)
        answer = {"version": rset["version"], "label": rset["label"], "size": total,
                  "complete": complete}
        if not complete:
            answer["progress"] = progress
        answer["files"] = {}
        for rfile in self.files_of(rset):
            answer["files"][rfile["filename"]] = self.file_to_dict(rfile, resource)
        return answer

    def resource_to_dict(self, resource: dict, with_sets: bool = False) -> dict:
        answer = {
            "id": resource["id"],
            "type": TYPE_NAMES[resource["rtype"]],
            "name": resource["name"],
            "architecture": resource["architecture"],
            "resource_uri": "%sboot-resources/%d/" % (API_PREFIX, resource["id"]),
            "last_deployed": resource.get("last_deployed"),
        }
        answer.update(resource["extra"])
        if resource.get("base_image"):
            answer["base_image"] = resource["base_image"]
        if with_sets:
            answer["sets"] = {}
            for rset in sorted(self.sets_of(resource), key=lambda s: s["id"], reverse=True):
                answer["sets"][rset["version"]] = self.set_to_dict(rset, resource)
        return answer

    # -- API operations ----------------------------------------------------------------
    def list_resources(self, rtype: str | None) -> list[dict]:
        with self.lock:
            resources = self.data["resources"]
            if rtype is None or rtype == "all":
                chosen = sorted(resources, key=lambda r: (RTYPE_NUMBERS[r["rtype"]], r["name"], r["architecture"]))
            elif rtype in TYPE_NAMES:
                chosen = sorted((r for r in resources if r["rtype"] == rtype),
                                key=lambda r: (r["name"], r["architecture"]))
            else:
                raise ApiError(400, "'%s' is not a valid boot resource type. Available types: %s"
                               % (rtype, list(TYPE_NAMES)))
            return [self.resource_to_dict(resource) for resource in chosen]

    def read_resource(self, resource_id) -> dict:
        with self.lock:
            return self.resource_to_dict(self.resource(resource_id), with_sets=True)

    def create_resource(self, fields: dict[str, str]) -> dict:
        """BootResourcesHandler.create: validate everything, then change state at once."""
        with self.lock:
            try:
                cleaned = rules.validate_create_form(
                    fields, self.mode, self.synced_names, self.architectures)
            except rules.FormErrors as error:
                raise ApiError(400, json.dumps(error.errors), "application/json; charset=utf-8") from None
            except rules.NameSplitCrash as error:
                raise ApiError(500, str(error)) from None
            existing = self._find_uploaded(cleaned["name"], cleaned["architecture"])
            try:
                base_image = rules.clean_base_image(
                    fields.get("name", ""), cleaned["base_image_submitted"],
                    existing["base_image"] if existing else "")
            except ValueError as error:
                raise ApiError(400, json.dumps({"base_image": [str(error)]}),
                               "application/json; charset=utf-8") from None
            if self._size_conflict(cleaned["sha256"], cleaned["size"]):
                raise ApiError(400, "File already exists with sha256 that is of different size.")
            resource = existing or self._new_resource(cleaned)
            resource["extra"] = {"subarches": resource["architecture"].split("/")[1],
                                 "title": cleaned["title"]}
            if not resource.get("base_image"):
                resource["base_image"] = base_image
            rset = {"id": self._take_id("set"), "resource_id": resource["id"],
                    "version": rules.next_version_name(
                        [s["version"] for s in self.sets_of(resource)], self.clock()),
                    "label": "uploaded"}
            self.data["sets"].append(rset)
            self._new_file(rset, cleaned)
            if not cleaned["keep_old"]:
                self._remove_older_files(resource, rset)
            self.save()
            return self.resource_to_dict(resource, with_sets=True)

    def _find_uploaded(self, name: str, architecture: str) -> dict | None:
        for resource in self.data["resources"]:
            if (resource["rtype"], resource["name"], resource["architecture"]) == (
                    "uploaded", name, architecture):
                return resource
        return None

    def _size_conflict(self, sha256: str, size: int) -> bool:
        if isinstance(self.files_store, LargeObjectStore):
            return self.files_store.size_conflict(sha256, size, self.data["largefiles"])
        return any(rfile["sha256"] == sha256 and rfile["size"] != size
                   for rfile in self.data["files"])

    def _new_resource(self, cleaned: dict) -> dict:
        resource = {"id": self._take_id("resource"), "rtype": "uploaded",
                    "name": cleaned["name"], "architecture": cleaned["architecture"],
                    "base_image": "", "extra": {}}
        self.data["resources"].append(resource)
        return resource

    def _new_file(self, rset: dict, cleaned: dict) -> dict:
        filetype = rules.UPLOAD_FILETYPES[cleaned["filetype"]]
        filename = filetype if self.mode == "3.4" else rules.UPLOADED_FILENAMES.get(filetype, filetype)
        on_disk = rules.filename_on_disk(
            cleaned["sha256"], {f["filename_on_disk"]: f["sha256"] for f in self.data["files"]})
        rfile = {"id": self._take_id("file"), "set_id": rset["id"], "filename": filename,
                 "filetype": filetype, "sha256": cleaned["sha256"],
                 "filename_on_disk": on_disk, "size": cleaned["size"], "sync": None}
        self.files_store.prepare_new_file(rfile, self.data["files"], self.data["largefiles"])
        self.data["files"].append(rfile)
        return rfile

    def _remove_older_files(self, resource: dict, keep: dict) -> None:
        """keep_old false: the files of every other set go now, before any upload."""
        older_sets = {s["id"] for s in self.sets_of(resource) if s["id"] != keep["id"]}
        self._remove_files([f for f in self.data["files"] if f["set_id"] in older_sets])

    def _remove_files(self, removed: list[dict]) -> None:
        removed_ids = {rfile["id"] for rfile in removed}
        self.data["files"] = [f for f in self.data["files"] if f["id"] not in removed_ids]
        self.files_store.forget_files(removed, self.data["files"], self.data["largefiles"])

    def delete_resource(self, resource_id) -> None:
        with self.lock:
            try:
                resource = self.resource(resource_id)
            except ApiError:
                raise ApiError(404, "BootResource matching query does not exist.") from None
            set_ids = {s["id"] for s in self.sets_of(resource)}
            self._remove_files([f for f in self.data["files"] if f["set_id"] in set_ids])
            self.data["sets"] = [s for s in self.data["sets"] if s["id"] not in set_ids]
            self.data["resources"] = [r for r in self.data["resources"] if r["id"] != resource["id"]]
            self.save()

    def mark_deployed(self, name: str, architecture: str, when: datetime) -> int:
        """A machine deployed `name` (os/series) on `architecture`: MAAS 3.7+ sets last_deployed on
        every boot resource of that name whose architecture starts with the machine's, sub-architecture
        ignored (Node.update_deployment_time, src/maasserver/models/node.py; 3.4 to 3.6 read the same
        from the newest IMAGE_DEPLOYED event). The API shows it as Django's JSON encoder writes an aware
        UTC time: milliseconds, 'Z'. Return how many resources it marked."""
        shown = django_json_time(when)
        marked = 0
        with self.lock:
            for resource in self.data["resources"]:
                if resource["name"] == name and resource["architecture"].startswith(architecture.split("/", 1)[0]):
                    resource["last_deployed"] = shown
                    marked += 1
            self.save()
        return marked

    def check_upload_target(self, resource_id, file_id) -> tuple[dict, dict]:
        """The look-ups the upload handler makes before it reads the chunk."""
        with self.lock:
            return self.resource(resource_id), self.rfile(file_id)

    def upload_chunk(self, resource_id, file_id, content_length: int, data: bytes,
                     no_space: bool = False) -> None:
        """BootResourceFileUploadHandler.update, in MAAS's order of checks."""
        with self.lock:
            resource, rfile = self.check_upload_target(resource_id, file_id)
            if content_length == 0:
                raise ApiError(400, "Missing data.")
            if content_length != len(data):
                raise ApiError(400, "Content-Length doesn't equal size of received data.")
            if resource["rtype"] != "uploaded":
                raise ApiError(403, "Cannot upload to a resource of type: %d."
                               % RTYPE_NUMBERS[resource["rtype"]])
            try:
                self.files_store.upload(rfile, data, self.data["largefiles"], no_space=no_space)
            except UploadRefused as refusal:
                self.save()
                raise ApiError(refusal.status, refusal.message) from None
            self.save()

    def write_unrecorded(self, file_id, data: bytes) -> None:
        """Bytes a dropped upload left on disk without the database knowing."""
        with self.lock:
            for rfile in self.data["files"]:
                if str(rfile["id"]) == str(file_id):
                    self.files_store.write_unrecorded(rfile, data, self.data["largefiles"])

    def create_notification(self, fields: dict[str, str]) -> dict:
        with self.lock:
            cleaned = self._notification_fields(fields)
            notification_id = self._take_id("notification")
            notification = {"id": notification_id, **cleaned,
                            "resource_uri": "%snotifications/%d/" % (API_PREFIX, notification_id)}
            self.data["notifications"].append(notification)
            self.save()
            return notification

    @staticmethod
    def _notification_fields(fields: dict[str, str]) -> dict:
        """NotificationForm's checks: message required, category one of four (else 400 as JSON)."""
        errors = {}
        message = fields.get("message")
        if not message:
            errors["message"] = ["This field is required."]
        category = fields.get("category") or "info"
        if category not in ("error", "warning", "success", "info"):
            errors["category"] = [
                "Select a valid choice. %s is not one of the available choices." % category]
        if errors:
            raise ApiError(400, json.dumps(errors), "application/json; charset=utf-8")
        context = fields.get("context") or ""
        try:
            context = json.loads(context) if context.strip() else {}
        except ValueError:
            pass
        return {
            "ident": fields.get("ident") or None,
            "user": None,
            "users": rules.parse_boolean_field(fields.get("users")),
            "admins": rules.parse_boolean_field(fields.get("admins")),
            "message": message,
            "context": context,
            "category": category,
            "dismissable": fields.get("dismissable") in (None, "true"),
        }

    def notification(self, notification_id) -> dict:
        """The notification with this id, or 404 with MAAS's wording (get_object_or_404)."""
        for notification in self.data["notifications"]:
            if str(notification["id"]) == str(notification_id):
                return notification
        raise ApiError(404, "No Notification matches the given query.")

    def list_notifications(self) -> list[dict]:
        """What MAAS lists: the notifications not dismissed (the simulator has one user)."""
        with self.lock:
            dismissed = set(self.data.get("dismissed_notifications", []))
            return [n for n in self.data["notifications"] if n["id"] not in dismissed]

    def read_notification(self, notification_id) -> dict:
        with self.lock:
            return self.notification(notification_id)

    def update_notification(self, notification_id, fields: dict[str, str]) -> dict:
        with self.lock:
            notification = self.notification(notification_id)
            notification.update(self._notification_fields(fields))
            self.save()
            return notification

    def delete_notification(self, notification_id) -> None:
        with self.lock:
            notification = self.notification(notification_id)
            self.data["notifications"].remove(notification)
            dismissed = self.data.get("dismissed_notifications", [])
            if notification["id"] in dismissed:
                dismissed.remove(notification["id"])
            self.save()

    def dismiss_notification(self, notification_id) -> None:
        """Hide it from the caller's listings; safe to repeat (MAAS's dismiss op)."""
        with self.lock:
            notification = self.notification(notification_id)
            dismissed = self.data.setdefault("dismissed_notifications", [])
            if notification["id"] not in dismissed:
                dismissed.append(notification["id"])
            self.save()

    # -- for tests -----------------------------------------------------------------------
    def newest_complete_file(self, name: str, architecture: str) -> dict:
        with self.lock:
            resource = self._find_uploaded(name, architecture)
            if resource is None:
                raise ImageUnavailable("no uploaded boot resource %s %s" % (name, architecture))
            for rset in sorted(self.sets_of(resource), key=lambda s: s["id"], reverse=True):
                if self.set_state(rset)[1]:
                    return self.files_of(rset)[0]
            raise ImageUnavailable("%s %s has no complete set" % (name, architecture))

    def file_bytes(self, name: str, architecture: str) -> bytes:
        with self.lock:
            rfile = self.newest_complete_file(name, architecture)
            return self.files_store.serve(rfile, self.data["largefiles"])
