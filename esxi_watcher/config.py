"""Load the YAML configuration into frozen dataclasses.

One table, OPTIONS, describes every key: its parser, default, description and example. It feeds
both the validation (every problem reported at once, by dotted key) and config.example.yaml.
`maas:` is one mapping (the target `default`) or a list of targets, each checked with the same
`maas.*` options under its own dotted key (`maas[site-b].url`).

Over 400 lines on purpose: the option table is most of it, and its descriptions are the
documentation of every key; splitting it from the parsers would separate each key from its check.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from esxi_watcher.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/esxi-watcher/config.yaml")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(value: Any) -> float:
    """Given seconds (a number) or a string such as '90m', '1h30m', '45s' or '30d', return seconds."""
    if isinstance(value, bool):
        raise ValueError("must be seconds or a duration such as '90m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        parts = _DURATION_PART.findall(text)
        if not parts or _DURATION_PART.sub("", text).strip():
            raise ValueError(f"{value!r} is not a duration such as '90m', '1h30m' or '45s'")
        seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    else:
        raise ValueError("must be seconds or a duration such as '90m'")
    if seconds <= 0:
        raise ValueError("must be more than zero")
    return seconds


def parse_size(value: Any) -> int:
    """Given bytes (a number) or a string such as '64GiB' or '500M', return bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as '64GiB'")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(i?b)?\s*", value.lower())
        if not match:
            raise ValueError(f"{value!r} is not a size such as '64GiB'")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError("must be a size such as '64GiB'")
    if size <= 0:
        raise ValueError("must be more than zero")
    return size


def parse_path(value: Any) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a path")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{value!r} must be an absolute path")
    return path


def parse_optional_path(value: Any) -> Path | None:
    return None if value is None else parse_path(value)


def parse_optional_keep(value: Any) -> int | None:
    """How many images to keep: unset keeps all; otherwise 1 or more."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a whole number, 1 or more (leave it out to keep every image)")
    return value


_ENVIRONMENT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_environment(value: Any) -> dict[str, str]:
    """Extra environment variables for the build: a mapping of names to strings."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("must be a mapping of variable names to values, e.g. {https_proxy: 'http://proxy:3128'}")
    for name, text in value.items():
        if not isinstance(name, str) or not _ENVIRONMENT_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an environment variable name")
        if not isinstance(text, str):
            raise ValueError(f"the value of {name} must be a string (quote numbers)")
        if name in reserved_environment():
            raise ValueError(f"{name} is set by esxi-watcher itself for every build and cannot be "
                             f"changed here")
    return dict(value)


def reserved_environment() -> set[str]:
    """The build variables esxi-watcher sets itself: the job marker, BUILD_ENVIRONMENT, the locale."""
    from esxi_watcher.build import BUILD_ENVIRONMENT
    from esxi_watcher.host import JOB_ENVIRONMENT_VARIABLE

    return {JOB_ENVIRONMENT_VARIABLE, *BUILD_ENVIRONMENT, "LANG", "LC_ALL"}


def parse_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    return value


def parse_url(value: Any) -> str:
    text = parse_text(value)
    if not re.match(r"https?://[^/\s]+", text):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return text if text.endswith("/") else text + "/"


def parse_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def parse_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def parse_command(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of strings (an argv list, not a shell string)")
    if "{iso}" not in " ".join(value):
        raise ValueError("must use the {iso} placeholder")
    return tuple(value)


def parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def parse_name_template(value: Any) -> str:
    from esxi_watcher.naming import check_name_template

    return check_name_template(parse_text(value))


def parse_title_template(value: Any) -> str:
    from esxi_watcher.naming import check_title_template

    return check_title_template(parse_text(value))


_TARGET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def parse_target_name(value: Any) -> str:
    """A target's name: it shows in status, logs, banners and on the command line."""
    if not isinstance(value, str) or not _TARGET_NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a target name: 1 to 63 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit")
    return value


@dataclass(frozen=True)
class Option:
    key: str
    parse: Callable[[Any], Any]
    default: Any
    description: str
    example: Any = None


OPTIONS: tuple[Option, ...] = (
    Option("drop_dir", parse_path, "/var/lib/esxi-drop",
           "Folder admins copy ESXi installer ISOs into. Processed ISOs move to done/, bad ones to "
           "rejected/, builds that failed for good to failed/ (each with <name>.reason.txt)."),
    Option("state_dir", parse_path, "/var/lib/esxi-watcher",
           "Job database (jobs.sqlite3), build work dirs (work/) and build logs (logs/)."),
    Option("watch.settle", parse_duration, "5s",
           "How long an ISO's size and modification time must stay unchanged before it is read."),
    Option("watch.rescan_interval", parse_duration, "5m",
           "How often the whole drop dir is scanned again, to catch anything inotify missed."),
    Option("watch.max_iso_size", parse_size, "64GiB",
           "Files larger than this are rejected without being read."),
    Option("build.template_dir", parse_path, "/opt/packer-maas/vmware-esxi",
           "The vmware-esxi folder of an existing packer-maas checkout. Each job builds in a copy of "
           "it (and of its sibling scripts/ folder) under state_dir/work/<job>/."),
    Option("build.command", parse_command, None,
           "The build command as an argv list (no shell) with {iso} and {workdir} placeholders. "
           "Left empty, it is chosen from the template folder: Makefile -> make ISO={iso}; "
           "*.pkr.hcl -> packer init + packer build; *.json -> packer build.",
           ["make", "ISO={iso}", "TIMEOUT=2h"]),
    Option("build.artifact", parse_text, "vmware-esxi.dd.gz",
           "The file the build writes in the template folder; it must be a complete gzip."),
    Option("build.console_log", parse_text, "serial.log",
           "Where the template writes the VM's serial console (relative to the template folder). "
           "Read while the build runs for its progress and installer errors; a missing file is fine."),
    Option("build.timeout", parse_duration, "2h",
           "A build still running after this long is killed (its whole process group). The "
           "template's own timeout (Packer's shutdown_timeout: make TIMEOUT=, a template's timeout "
           "variable) is set to 90% of it, so Packer's own error comes first."),
    Option("build.retries", parse_count, 1,
           "How many more times a build that failed in a way that may be transient is tried."),
    Option("build.lock_file", parse_path, "/run/lock/esxi-watcher-build.lock",
           "Builds take an flock on this file, one at a time on the host: the daemon's and "
           "`esxi-watcher build`'s alike (a build needs the host's KVM, memory and nbd devices). "
           "Daemons with other state dirs on the same host must name the same file."),
    Option("build.kickstart", parse_optional_path, None,
           "A kickstart file that replaces the template's own (KS.CFG, or http/vmware-esxi-ks.cfg in "
           "older templates) in each job's work copy. Left empty, the template's kickstart is used.",
           "/etc/esxi-watcher/ks.cfg"),
    Option("build.root_password_file", parse_optional_path, None,
           "A root-only file (mode 0600 or stricter) holding the root password the images get, in "
           "place of packer-maas's default password123!, put in every place of the work copy that "
           "carries it: plain text, checked against ESXi's password rules before the build, or a "
           "crypt hash ($6$...) written as `rootpw --iscrypted` (the vCenter registration then gets "
           "no password).",
           "/etc/esxi-watcher/root-password"),
    Option("build.environment", parse_environment, {},
           "Extra environment variables for the build commands: proxies (https_proxy, no_proxy), "
           "PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX, PACKER_PLUGIN_PATH (see the README's "
           "offline MAAS host recipe). A proxy URL's password is masked in logs. ESXI_WATCHER_JOB, "
           "PACKER_NO_COLOR, CHECKPOINT_DISABLE, LANG and LC_ALL are esxi-watcher's own."),
    Option("maas.name", parse_target_name, "default",
           "The target's name, as status, logs, banners and `esxi-watcher retry JOB --target NAME` "
           "show it. `maas:` is one MAAS (this mapping) or a list of targets, each a mapping with "
           "these keys; a list needs name, url and api_key_file in each item. Every image is built "
           "once and registered on every target."),
    Option("maas.url", parse_url, "http://localhost:5240/MAAS/",
           "The MAAS region API, e.g. http://localhost:5240/MAAS/. Use the local region controller, "
           "not a load-balanced address: each upload chunk is appended on the region receiving it."),
    Option("maas.api_key_file", parse_path, "/etc/esxi-watcher/maas-api-key",
           "File holding an admin's MAAS API key (`maas apikey --username=NAME`). It must not be "
           "readable by others. Without it, images are built and wait for registration."),
    Option("maas.name_template", parse_name_template, "esxi/{version}-{build}{vendor_suffix}",
           "The boot resource name. Fields: {major} {minor} {patch} {version} (8.0.2) {update} "
           "(U2, .0.0100 for ESXi 9.0.0.0100, or empty) {build} {vendor} {vendor_suffix} (-dell, -hpe, or empty for stock ISOs). "
           "Must start with esxi/. When other bytes already hold the name on this target, the "
           "image gets the name tagged with its ISO's sha256: <name>-<first 8 hex digits>."),
    Option("maas.title_template", parse_title_template,
           "VMware ESXi {major}.{minor}{update} {build}{vendor_title}",
           "The title MAAS shows. Same fields as the name, plus {vendor_title} (' (Dell)' or empty)."),
    Option("maas.architecture", parse_text, "amd64/generic", "Architecture of the boot resource."),
    Option("maas.retry_min_wait", parse_duration, "30s",
           "MAAS away (refused, timed out, 5xx, an answer that is not MAAS's, an upload cut off) is "
           "not a failure: the registration waits and tries again, for as long as it takes. The first "
           "wait is this long; each further one doubles, up to retry_max_wait, and is shortened by a random "
           "0 to 25 % so that waits spread. The next try is kept in the job store and survives restarts."),
    Option("maas.retry_max_wait", parse_duration, "10m",
           "The longest wait between two tries while MAAS is away: during a MAAS upgrade of some "
           "hours the image is registered at most this long after MAAS is back. Only answers "
           "waiting cannot fix (the API key refused, a 400 with a reason, the bytes held by another "
           "image) fail the registration; `esxi-watcher retry JOB --target NAME` tries again."),
    Option("maas.request_timeout", parse_duration, "120s", "Timeout of one HTTP request to MAAS."),
    Option("maas.keep", parse_optional_keep, None,
           "How many images to keep on this target per release line (major.minor and vendor): once "
           "the newest is registered and complete, older images this daemon registered there are "
           "deleted. Never an image the daemon did not create, nor one MAAS says was deployed within "
           "keep_deployed_within. Left empty, every image is kept.", 2),
    Option("maas.keep_deployed_within", parse_duration, "30d",
           "With keep set: an older image MAAS reports as deployed within this long is kept."),
    Option("maas.notify", parse_bool, True,
           "Post a banner to MAAS admins on this target when an image is registered or fails (one "
           "banner per job, replaced by the next, the failure one naming the command that retries)."),
    Option("metrics.textfile", parse_optional_path, None,
           "A Prometheus node_exporter textfile (e.g. in the textfile collector's folder) rewritten "
           "whenever jobs change: jobs by state, registrations per target, build durations, bytes "
           "uploaded. Left empty, no metrics are written.",
           "/var/lib/prometheus/node-exporter/esxi-watcher.prom"),
    Option("log.format", parse_choice("console", "json"), "console",
           "console: key=value lines (journald adds the time); json: one JSON object per line."),
    Option("log.level", parse_choice("debug", "info", "warning", "error"), "info", "Lowest level logged."),
)


# Keys that were once read and are no longer: a file that still has them loads, with a notice.
OBSOLETE_TARGET_KEYS = {
    "retries": "no longer used: a registration waits for MAAS as long as it takes "
               "(maas.retry_min_wait up to maas.retry_max_wait between tries), so an outage never fails "
               "an image; only answers waiting cannot fix do",
}
# Keys a list item must give: there is no sensible shared default for several MAAS deployments.
REQUIRED_IN_LIST = ("name", "url", "api_key_file")


@dataclass(frozen=True)
class WatchConfig:
    settle: float
    rescan_interval: float
    max_iso_size: int


@dataclass(frozen=True)
class BuildConfig:
    template_dir: Path
    command: tuple[str, ...] | None
    artifact: str
    console_log: str
    timeout: float
    retries: int
    kickstart: Path | None = None
    root_password_file: Path | None = None
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    lock_file: Path = Path("/run/lock/esxi-watcher-build.lock")


@dataclass(frozen=True)
class MetricsConfig:
    textfile: Path | None = None


@dataclass(frozen=True)
class TargetConfig:
    """One MAAS deployment the images are registered in."""

    name: str
    url: str
    api_key_file: Path
    name_template: str
    title_template: str
    architecture: str
    retry_min_wait: float
    retry_max_wait: float
    request_timeout: float
    notify: bool
    keep: int | None = None
    keep_deployed_within: float = 30 * 86400.0
    # Where the file says it: 'maas' (a single mapping) or 'maas[NAME]' (an item of the list).
    where: str = dataclasses.field(default="maas", compare=False)


@dataclass(frozen=True)
class LogConfig:
    format: str
    level: str


@dataclass(frozen=True)
class Config:
    drop_dir: Path
    state_dir: Path
    watch: WatchConfig
    build: BuildConfig
    targets: tuple[TargetConfig, ...]
    log: LogConfig
    metrics: MetricsConfig = MetricsConfig()
    # What the daemon logs about the file once loaded (keys no longer used), one line each.
    notices: tuple[str, ...] = dataclasses.field(default=(), compare=False)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "jobs.sqlite3"

    @property
    def work_root(self) -> Path:
        return self.state_dir / "work"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def artifacts_dir(self) -> Path:
        """Each built image, kept until `forget`, so a target added later needs no rebuild."""
        return self.state_dir / "artifacts"

    def target(self, name: str) -> TargetConfig | None:
        return next((target for target in self.targets if target.name == name), None)


_SECTIONS = {"watch": WatchConfig, "build": BuildConfig, "metrics": MetricsConfig, "log": LogConfig}
TARGET_OPTIONS = tuple(option for option in OPTIONS if option.key.startswith("maas."))
_TOP_OPTIONS = tuple(option for option in OPTIONS if not option.key.startswith("maas."))


def _lookup(document: dict, key: str) -> tuple[bool, Any]:
    node: Any = document
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _unknown_keys(document: dict) -> list[str]:
    known = {option.key for option in _TOP_OPTIONS}
    problems = []
    for key, value in document.items():
        if key in _SECTIONS:
            if value is None:  # a section whose keys are all commented out
                continue
            if not isinstance(value, dict):
                problems.append(f"At '{key}': must be a mapping")
                continue
            problems += [f"At '{key}.{sub}': unknown key" for sub in value if f"{key}.{sub}" not in known]
        elif key not in known and key != "maas":
            problems.append(f"At '{key}': unknown key")
    return problems


def parse_config(document: Any, source: str = "config") -> Config:
    """Given the parsed YAML document, return a Config or raise ConfigError listing every problem."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(source, ["the top level must be a mapping of keys to values"])
    problems = _unknown_keys(document)
    values: dict[str, Any] = {}
    for option in _TOP_OPTIONS:
        found, raw = _lookup(document, option.key)
        if not found or raw is None:
            raw = option.default
        try:
            values[option.key] = option.parse(raw)
        except ValueError as error:
            problems.append(f"At '{option.key}': {error}")
    targets, target_problems, notices = parse_targets(document.get("maas"))
    problems += target_problems
    if "drop_dir" in values and "state_dir" in values:
        problems += folder_overlap_problems(values["drop_dir"], values["state_dir"])
    if problems:
        raise ConfigError(source, problems)
    return _assemble(values, targets, notices)


def parse_targets(section: Any) -> tuple[tuple[TargetConfig, ...], list[str], list[str]]:
    """Given what `maas:` holds (nothing, one mapping, or a list of mappings), return the targets,
    the problems found (by dotted key) and notices about keys no longer used."""
    if section is None:
        section = {}
    if isinstance(section, dict):
        target, problems, notices = _parse_target(section, "maas", required=())
        return ((target,) if target else ()), problems, notices
    if not isinstance(section, list) or not section:
        return (), ["At 'maas': must be a mapping (one MAAS) or a non-empty list of targets"], []
    targets, problems, notices = [], [], []
    for index, item in enumerate(section):
        name = item.get("name") if isinstance(item, dict) else None
        where = f"maas[{name}]" if isinstance(name, str) and _TARGET_NAME.fullmatch(name) else f"maas[{index}]"
        if not isinstance(item, dict):
            problems.append(f"At '{where}': must be a mapping with name, url and api_key_file")
            continue
        target, item_problems, item_notices = _parse_target(item, where, required=REQUIRED_IN_LIST)
        problems += item_problems
        notices += item_notices
        if target is not None:
            targets.append(target)
    problems += _duplicate_names(targets)
    return tuple(targets), problems, notices


def _parse_target(item: dict, where: str, required: tuple[str, ...]) -> tuple[TargetConfig | None, list[str], list[str]]:
    known = {option.key.split(".", 1)[1] for option in TARGET_OPTIONS}
    problems, notices = [], []
    for key in item:
        if key in OBSOLETE_TARGET_KEYS:
            notices.append(f"At '{where}.{key}': {OBSOLETE_TARGET_KEYS[key]}")
        elif key not in known:
            problems.append(f"At '{where}.{key}': unknown key")
    values: dict[str, Any] = {}
    for option in TARGET_OPTIONS:
        key = option.key.split(".", 1)[1]
        raw = item.get(key)
        if raw is None and key in required:
            problems.append(f"At '{where}.{key}': required in each item of a list of targets")
            continue
        try:
            values[key] = option.parse(option.default if raw is None else raw)
        except ValueError as error:
            problems.append(f"At '{where}.{key}': {error}")
    if problems:
        return None, problems, notices
    return TargetConfig(**values, where=where), problems, notices


def _duplicate_names(targets: list[TargetConfig]) -> list[str]:
    seen: set[str] = set()
    problems = []
    for target in targets:
        if target.name in seen:
            problems.append(f"At '{target.where}.name': {target.name!r} names another target too: "
                            "each target needs its own name")
        seen.add(target.name)
    return problems


def folder_overlap_problems(drop_dir: Path, state_dir: Path) -> list[str]:
    """Given both folders, return why they cannot be used together: the daemon deletes work dirs
    under state_dir and moves files around in drop_dir, so neither may hold the other."""
    drop, state = Path(os.path.realpath(drop_dir)), Path(os.path.realpath(state_dir))
    if drop == state:
        return [f"At 'drop_dir': {drop_dir} is the same folder as 'state_dir' ({state_dir}): "
                "use two separate folders"]
    if state in drop.parents:
        return [f"At 'drop_dir': {drop_dir} is inside 'state_dir' ({state_dir}): "
                "use two separate folders, neither inside the other"]
    if drop in state.parents:
        return [f"At 'state_dir': {state_dir} is inside 'drop_dir' ({drop_dir}): "
                "use two separate folders, neither inside the other"]
    return []


def _assemble(values: dict[str, Any], targets: tuple[TargetConfig, ...], notices: list[str] | tuple[str, ...] = ()
              ) -> Config:
    sections = {}
    for name, cls in _SECTIONS.items():
        fields = {f.name: values[f"{name}.{f.name}"] for f in dataclasses.fields(cls)}
        sections[name] = cls(**fields)
    return Config(drop_dir=values["drop_dir"], state_dir=values["state_dir"], targets=targets,
                  notices=tuple(notices), **sections)


# Keys read once at start: the folder locks, the job store, the watcher and intake are built from them.
RESTART_KEYS = ("drop_dir", "state_dir", "watch.settle", "watch.max_iso_size")


def setting(config: Config, key: str) -> Any:
    """Given a dotted key such as 'build.timeout' (not a target's), return its value in config."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def reloaded(running: Config, loaded: Config) -> tuple[Config, list[str], list[str]]:
    """Given the running config and one loaded again from its file, return the config to run with
    (keys of RESTART_KEYS keep their running values), those kept keys, and the keys that change
    (a target's as 'maas.key' or 'maas[NAME].key'; a target added or removed as 'maas[NAME]')."""
    kept = [key for key in RESTART_KEYS if setting(loaded, key) != setting(running, key)]
    values = {option.key: setting(running if option.key in kept else loaded, option.key) for option in _TOP_OPTIONS}
    changed = []
    for option in OPTIONS:
        if option.key.startswith("maas."):
            if option is TARGET_OPTIONS[0]:
                changed += _target_changes(running.targets, loaded.targets)
        elif values[option.key] != setting(running, option.key):
            changed.append(option.key)
    return _assemble(values, loaded.targets, loaded.notices), kept, changed


def _target_changes(running: tuple[TargetConfig, ...], loaded: tuple[TargetConfig, ...]) -> list[str]:
    before = {target.name: target for target in running}
    after = {target.name: target for target in loaded}
    changed = [before[name].where for name in before if name not in after]
    for name, target in after.items():
        if name not in before:
            changed.append(target.where)
            continue
        changed += [f"{target.where}.{field.name}" for field in dataclasses.fields(TargetConfig)
                    if field.compare and getattr(target, field.name) != getattr(before[name], field.name)]
    return changed


def load_config(path: Path) -> Config:
    """Given a YAML file's path, return its Config; raise ConfigError naming every bad key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read: {error.strerror}"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [f"not valid YAML: {error}".replace("\n", " ")]) from None
    return parse_config(document, str(path))


def example_yaml() -> str:
    """Return config.example.yaml: every option with its description and default or example."""
    lines = ["# esxi-watcher configuration (/etc/esxi-watcher/config.yaml).",
             "# Generated from esxi_watcher/config.py: `esxi-watcher config-example`.", ""]
    section = None
    for option in OPTIONS:
        head, _, leaf = option.key.rpartition(".")
        if head != section:
            if head:
                lines += ["", f"{head}:"]
            section = head
        indent = "  " if head else ""
        for text in _wrap(option.description):
            lines.append(f"{indent}# {text}")
        value = option.example if option.default is None else option.default
        dumped = yaml.safe_dump({leaf: value}, default_flow_style=True, width=200).strip()[1:-1]
        prefix = "" if option.default is not None or value is None else "# "
        lines.append(f"{indent}{prefix}{dumped}")
    return "\n".join(lines + _TARGETS_EXAMPLE) + "\n"


# How several MAAS deployments look: `maas:` as a list (shown commented out in the example file).
_TARGETS_EXAMPLE = [
    "",
    "# Several MAAS deployments: give `maas:` a list instead; each image is built once and registered",
    "# on every target. Each item takes the keys above; name, url and api_key_file are required.",
    "# maas:",
    "#   - name: site-a",
    "#     url: http://maas-a.example.com:5240/MAAS/",
    "#     api_key_file: /etc/esxi-watcher/site-a.key",
    "#   - name: site-b",
    "#     url: http://maas-b.example.com:5240/MAAS/",
    "#     api_key_file: /etc/esxi-watcher/site-b.key",
    "#     retry_max_wait: 30m",
]


def _wrap(text: str, width: int = 96) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)
