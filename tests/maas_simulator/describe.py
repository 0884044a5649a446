"""The API description MAAS serves at ``/MAAS/api/2.0/describe/``, for the handlers we model.

Shape as maasserver/api/doc.py builds it (describe_resource, describe_handler,
describe_actions) and doc_handler.describe() finishes it (absolute "uri" per handler):
resources sorted by name, each {"name", "anon", "auth"}; a handler has "name" (the class
name, which python-libmaas's bones turns into an attribute: "BootResourcesHandler" ->
session.BootResources), "doc", "params" (URI template names), "path", "uri" and
"actions" ({"name", "method", "op", "restful", "doc"}, sorted by name).
"""

from __future__ import annotations

import copy
import hashlib
import json

API_PATH = "/MAAS/api/2.0/"


def _action(name, method, op=None, doc=""):
    return {"name": name, "method": method, "op": op, "restful": op is None, "doc": doc}


def _handler(name, doc, path, params, actions):
    return {
        "name": name,
        "doc": doc,
        "path": API_PATH + path,
        "params": list(params),
        "actions": sorted(actions, key=lambda action: action["name"]),
    }


HANDLERS = {
    "BootResourcesHandler": ("auth", _handler(
        "BootResourcesHandler", "Manage the boot resources.", "boot-resources/", [],
        [
            _action("read", "GET", doc="List boot resources\n\nList all boot resources\n\n"
                    ":param type: Optional. Type of boot resources to list.\n:type type: String\n"),
            _action("create", "POST", doc="Create a new boot resource\n\n"
                    ":param name: Required.\n:param architecture: Required.\n"
                    ":param sha256: Required.\n:param size: Required.\n:param title: Optional.\n"
                    ":param filetype: Optional. (Default: tgz)\n:param base_image: Optional.\n"),
            _action("import", "POST", op="import", doc="Import boot resources"),
            _action("is_importing", "GET", op="is_importing", doc="Importing status"),
            _action("stop_import", "POST", op="stop_import", doc="Stop import boot resources"),
        ])),
    "BootResourceHandler": ("auth", _handler(
        "BootResourceHandler", "Manage a boot resource.", "boot-resources/{id}/", ["id"],
        [
            _action("read", "GET", doc="Read a boot resource"),
            _action("delete", "DELETE", doc="Delete a boot resource"),
        ])),
    "BootResourceFileUploadHandler": ("auth", _handler(
        "BootResourceFileUploadHandler", "Upload a boot resource file.",
        "boot-resources/{resource_id}/upload/{id}/", ["resource_id", "id"],
        [_action("update", "PUT", doc="Upload chunk of boot resource file.")])),
    "NotificationsHandler": ("auth", _handler(
        "NotificationsHandler", "Manage the collection of all the notifications in MAAS.",
        "notifications/", [],
        [
            _action("read", "GET", doc="List notifications"),
            _action("create", "POST", doc="Create a notification\n\n"
                    ":param message: Required.\n:param context: Optional.\n"
                    ":param category: Optional.\n:param ident: Optional.\n"
                    ":param user: Optional.\n:param users: Optional.\n:param admins: Optional.\n"),
        ])),
    # MAAS's NotificationHandler (src/maasserver/api/notification.py): read, update, delete
    # (204) and op=dismiss (POST) on one notification.
    "NotificationHandler": ("auth", _handler(
        "NotificationHandler", "Manage an individual notification.", "notifications/{id}/", ["id"],
        [
            _action("read", "GET", doc="Read a notification\n\n:param {id}: Required."),
            _action("update", "PUT", doc="Update a notification\n\n"
                    ":param message: Required.\n:param context: Optional.\n"
                    ":param category: Optional.\n:param ident: Optional.\n"
                    ":param user: Optional.\n:param users: Optional.\n:param admins: Optional.\n"
                    ":param dismissable: Optional.\n"),
            _action("delete", "DELETE", doc="Delete a notification"),
            _action("dismiss", "POST", op="dismiss", doc="Dismiss a notification"),
        ])),
    # MAAS's UsersHandler (src/maasserver/api/users.py, 3.4 to 3.8): read, create and op=whoami
    # (GET), which answers the caller's user as UserHandler shows one.
    "UsersHandler": ("auth", _handler(
        "UsersHandler", "Manage the user accounts of this MAAS.", "users/", [],
        [
            _action("read", "GET", doc="List users"),
            _action("create", "POST", doc="Create a MAAS user account"),
            _action("whoami", "GET", op="whoami", doc="Retrieve logged-in user"),
        ])),
    "VersionHandler": ("anon", _handler(
        "VersionHandler", "Information about this MAAS instance.", "version/", [],
        [_action("read", "GET", doc="MAAS version information")])),
}


def describe_document(base_url: str) -> dict:
    """Given "http://host:port" (what the client asked), return the describe document."""
    resources = []
    for name in sorted(HANDLERS):
        kind, handler = HANDLERS[name]
        handler = copy.deepcopy(handler)
        handler["uri"] = base_url + handler["path"]
        resource = {"name": name, "anon": None, "auth": None}
        resource[kind] = handler
        resources.append(resource)
    description = {"doc": "MAAS API", "resources": resources}
    description["handlers"] = [r["anon"] for r in resources if r["anon"] is not None]
    description["handlers"] += [r["auth"] for r in resources if r["auth"] is not None]
    description["hash"] = hashlib.sha1(
        json.dumps(HANDLERS, sort_keys=True).encode()).hexdigest()
    return description
