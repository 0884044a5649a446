"""The network a build needs, as build.environment sets it: proxies, the pip index, a wheel folder."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from esxi_watcher import template_needs as needs
from esxi_watcher.config import Config
from esxi_watcher.doctor.verdict import FAIL, PASS, WARN, Check
from esxi_watcher.logs import redact

NETWORK_TIMEOUT = 3.0
PYPI = ("pypi.org", 443)
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def build_environment(config: Config) -> Iterator[Check]:
    """Given the config, yield whether each proxy, the pip index and the wheel folder will serve the build."""
    environment = config.build.environment
    for variable in PROXY_VARIABLES:
        if environment.get(variable):
            yield _proxy(variable, environment[variable])
    wanted = needs.requirements(config.build.template_dir)
    if not wanted:
        return
    find_links = environment.get("PIP_FIND_LINKS")
    no_index = environment.get("PIP_NO_INDEX", "").lower() in ("1", "yes", "true", "on")
    covered = False
    if find_links:
        check = _find_links(find_links, wanted)
        covered = check.status == PASS
        yield check
    if no_index:
        if not find_links:
            yield Check("pip index", FAIL, "PIP_NO_INDEX is set and no PIP_FIND_LINKS: pip has nowhere to "
                                            "install requirements.txt from", _wheels_fix())
        return
    index = environment.get("PIP_INDEX_URL")
    if index:
        yield _pip_index(index, covered)
    elif not covered and not _proxied(environment):
        yield _pypi_reachable()


def _proxy(variable: str, value: str) -> Check:
    try:
        address = urlsplit(value if "://" in value else f"http://{value}")
        host, port = address.hostname, address.port or (443 if address.scheme == "https" else 80)
    except ValueError as error:
        return Check(f"proxy {variable}", FAIL, f"not a URL ({error})", f"set build.environment {variable} to "
                                                                         f"http://HOST:PORT")
    if not host:
        return Check(f"proxy {variable}", FAIL, "names no host", f"set build.environment {variable} to "
                                                                 f"http://HOST:PORT")
    shown = f"{host}:{port}"
    reason = _connect(host, port)
    if reason:
        return Check(f"proxy {variable}", FAIL, f"{shown}: {reason}", f"start the proxy or fix build.environment {variable}")
    return Check(f"proxy {variable}", PASS, f"{shown} accepts connections")


def _proxied(environment: dict[str, str]) -> bool:
    return any(environment.get(variable) for variable in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"))


def _connect(host: str, port: int) -> str | None:
    """Given an address, return None when a TCP connection opens within NETWORK_TIMEOUT, else why not."""
    try:
        with socket.create_connection((host, port), timeout=NETWORK_TIMEOUT):
            return None
    except socket.gaierror as error:
        return f"name not resolved ({error.strerror})"
    except socket.timeout:
        return f"no answer within {NETWORK_TIMEOUT:g} s"
    except OSError as error:
        return error.strerror or str(error)


def _find_links(value: str, wanted: list[tuple[str, str | None]]) -> Check:
    """PIP_FIND_LINKS: one or more folders (or file:// URLs, or http ones we cannot list), space-separated."""
    entries = value.split()
    folders = [Path(entry[len("file://"):] if entry.startswith("file://") else entry)
               for entry in entries if "://" not in entry or entry.startswith("file://")]
    urls = [_without_credentials(entry) for entry in entries if "://" in entry and not entry.startswith("file://")]
    if not folders:
        return Check("pip wheels", WARN, f"PIP_FIND_LINKS {' '.join(urls)}: a URL, not checked",
                     "a local folder can be checked: " + _wheels_fix())
    absent = [str(folder) for folder in folders if not folder.is_dir()]
    if absent:
        return Check("pip wheels", FAIL, f"PIP_FIND_LINKS {', '.join(absent)}: not a folder", _wheels_fix(folders[0]))
    missing = set.intersection(*(set(needs.missing_distributions(folder, wanted)) for folder in folders))
    shown = " ".join(str(folder) for folder in folders)
    if missing and not urls:
        listed = ", ".join(sorted(missing, key=str.lower))
        return Check("pip wheels", FAIL, f"PIP_FIND_LINKS {shown} lacks {listed} of the template's requirements.txt",
                     _wheels_fix(folders[0]))
    if missing:
        return Check("pip wheels", WARN, f"PIP_FIND_LINKS {shown} lacks {', '.join(sorted(missing))}; "
                                         f"{' '.join(urls)} not checked", _wheels_fix(folders[0]))
    return Check("pip wheels", PASS, f"PIP_FIND_LINKS {shown} holds all {len(wanted)} requirements")


def _without_credentials(url: str) -> str:
    """Given a URL, return it without a user:password@ part (index and proxy URLs may carry one)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a URL)"
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()


def _wheels_fix(folder: Path | None = None) -> str:
    target = folder or Path("/var/lib/esxi-watcher/wheels")
    return (f"once, on a host with network: `python3 -m pip download -r requirements.txt -d wheels` in the "
            f"template folder, copy wheels/ to {target}, set build.environment PIP_FIND_LINKS: {target} and "
            f"PIP_NO_INDEX: '1' (README: Offline MAAS host)")


def _pip_index(url: str, covered: bool) -> Check:
    shown = _without_credentials(url)
    reason = _http_answer(shown)  # whether it answers at all: a 401 without the credentials counts
    if reason is None:
        return Check("pip index", PASS, f"PIP_INDEX_URL {shown} answers")
    if covered:
        return Check("pip index", WARN, f"PIP_INDEX_URL {shown}: {reason}; pip retries it for each requirement "
                                        f"before taking PIP_FIND_LINKS", "set PIP_NO_INDEX: '1' in build.environment")
    return Check("pip index", FAIL, f"PIP_INDEX_URL {shown}: {reason}: `pip install -r requirements.txt` will fail",
                 _wheels_fix())


def _http_answer(url: str) -> str | None:
    """Given a URL, return None when it answers HTTP (any status below 500), else why not."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=NETWORK_TIMEOUT):
            return None
    except urllib.error.HTTPError as error:
        return None if error.code < 500 else f"HTTP {error.code}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return redact(getattr(reason, "strerror", None) or str(reason))


def _pypi_reachable() -> Check:
    reason = _connect(*PYPI)
    if reason is None:
        return Check("pip index", PASS, f"{PYPI[0]} reachable: the build's `pip install -r requirements.txt` "
                                        f"can download")
    return Check("pip index", WARN, f"{PYPI[0]}:{PYPI[1]}: {reason}: the build's `pip install -r "
                                    f"requirements.txt` (and `packer init`) will need the network", _wheels_fix())
