"""Command-line entry points: run, inspect, status, logs, retry, forget, show, rebuild, build, doctor,
config-example.

Exit codes: 0 fine, 1 a failure while working, 2 bad input (bad config, not an ESXi ISO, no such job),
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from esxi_watcher import __version__
from esxi_watcher.config import DEFAULT_CONFIG_PATH, Config, example_yaml, load_config
from esxi_watcher.errors import EsxiWatcherError, StoreLocked, StoreNotADatabase

# What the operator can do about a store the commands cannot use (they never repair it themselves).
_STORE_ADVICE = {StoreLocked: "try again", StoreNotADatabase: "the daemon moves it aside when it starts"}
CLI_STORE_TIMEOUT = 5.0
COMPLETION_STORE_TIMEOUT = 0.5  # a shell completing a job id must not hang on a locked store


STATUS_FINISHED_SHOWN = 50  # finished jobs `status` shows without --all


class UsageError(EsxiWatcherError):
    exit_code = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esxi-watcher", description=(
        "Turn VMware ESXi installer ISOs dropped in a folder into MAAS boot resources."))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH,
                        help=f"configuration file (default {DEFAULT_CONFIG_PATH})")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="run the daemon (what the systemd service does)")
    inspect = commands.add_parser("inspect", help="say whether an ISO is an ESXi installer, and which")
    inspect.add_argument("iso", type=Path)
    inspect.add_argument("--json", action="store_true")
    status = commands.add_parser("status", help="list the jobs")
    status.add_argument("--json", action="store_true")
    status.add_argument("--all", action="store_true",
                        help=f"every job; without it, jobs at work and the newest {STATUS_FINISHED_SHOWN} finished")
    # For the shell's completion (completions/esxi-watcher): words one a line, nothing on any error.
    status.add_argument("--ids", action="store_true", help=argparse.SUPPRESS)
    status.add_argument("--targets", action="store_true", help=argparse.SUPPRESS)
    logs = commands.add_parser("logs", help="print a job's build log")
    logs.add_argument("job", type=int)
    retry = commands.add_parser("retry", help="try a failed job again (e.g. after fixing the API key)")
    retry.add_argument("job", type=int)
    retry.add_argument("--target", metavar="NAME",
                       help="only its registration on this MAAS target (default: every target it failed on)")
    forget = commands.add_parser("forget", help="drop a finished job from the store and its kept image "
                                                 "(its ISO stays)")
    forget.add_argument("job", type=int)
    show = commands.add_parser("show", help="what built a job's image (ISO, template, packer, commands, "
                                            "durations, image) and where it is registered")
    show.add_argument("job", type=int)
    show.add_argument("--json", action="store_true")
    rebuild = commands.add_parser("rebuild", help="build a registered job's ISO again with today's template "
                                                  "and kickstart (a new job; the daemon builds and registers it)")
    rebuild.add_argument("job", type=int)
    one_shot = commands.add_parser("build", help="build (and register) one ISO in the foreground, without the daemon")
    one_shot.add_argument("iso", type=Path)
    one_shot.add_argument("--target", metavar="NAME", help="register on this MAAS target only (default: every target)")
    one_shot.add_argument("--no-register", action="store_true", help="keep the image as a file instead")
    one_shot.add_argument("--output", type=Path, metavar="PATH",
                          help="with --no-register: where the image goes (default: ./<MAAS name>.dd.gz, "
                               "with - for /); an existing file is never overwritten")
    doctor = commands.add_parser("doctor", help="check the host, the template, packer, KVM and each MAAS target "
                                                "(exit 1 on any FAIL)")
    doctor.add_argument("--json", action="store_true", help="a list of {name, status, detail, fix}")
    commands.add_parser("config-example", help="print an example configuration with every key")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    try:
        return _dispatch(arguments)
    except EsxiWatcherError as error:
        advice = _STORE_ADVICE.get(type(error))
        print(f"esxi-watcher: {error}" + (f": {advice}" if advice else ""), file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def _dispatch(arguments: argparse.Namespace) -> int:
    if arguments.command == "config-example":
        sys.stdout.write(example_yaml())
        return 0
    if arguments.command == "inspect":
        return _inspect(arguments.iso, arguments.json)
    config = load_config(arguments.config)
    handlers = {"run": _run, "status": _status, "logs": _logs, "retry": _retry, "forget": _forget,
                "doctor": _doctor, "build": _build, "show": _show, "rebuild": _rebuild}
    return handlers[arguments.command](config, arguments)


def _inspect(path: Path, as_json: bool) -> int:
    from esxi_watcher.iso import inspect_iso

    facts = inspect_iso(path)
    if as_json:
        print(json.dumps(facts.to_dict(), indent=2))
    elif facts.esxi:
        vendor = f", {facts.vendor} image" if facts.vendor else ""
        print(f"VMware ESXi {facts.release} build {facts.build} "
              f"(version {facts.version}{vendor})")
    if not facts.esxi:
        print(f"esxi-watcher: {path}: not an ESXi installer ISO: {facts.reason}", file=sys.stderr)
        return 2
    return 0


def _run(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.daemon import Daemon
    from esxi_watcher.logs import configure_logging

    configure_logging(config.log.format, config.log.level)
    return Daemon(config, config_path=arguments.config).run()


def _open_store(config: Config):
    from esxi_watcher.store import JobStore

    if not config.db_path.exists():
        raise UsageError(f"no job store at {config.db_path}: the daemon has not run yet")
    return JobStore(config.db_path, timeout=CLI_STORE_TIMEOUT)


def _job(store, job_id: int):
    job = store.get(job_id)
    if job is None:
        raise UsageError(f"no job {job_id}: see `esxi-watcher status`")
    return job


def _status(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.status import job_rows, job_table

    if arguments.ids or arguments.targets:
        return _completion_words(config, arguments.targets)
    if not config.db_path.exists():
        print("[]" if arguments.json else "no jobs yet")
        return 0
    store = _open_store(config)
    if arguments.all:
        jobs, older = store.jobs(), 0
    else:
        jobs, older = store.jobs_to_show(finished=STATUS_FINISHED_SHOWN)
    registrations = store.registrations_of(job.id for job in jobs)
    if arguments.json:
        print(json.dumps(job_rows(jobs, registrations), indent=2))
        return 0
    print(job_table(jobs, registrations))
    if older:
        print(f"({older} older finished jobs not shown: `esxi-watcher status --all`)")
    return 0


def _completion_words(config: Config, targets: bool) -> int:
    """Given a config, print its target names or the ids of the jobs `status` lists, one a line;
    print nothing when the store is missing, locked or damaged (the shell is completing a word)."""
    from esxi_watcher.store import JobStore

    words = [target.name for target in config.targets] if targets else []
    try:
        if not targets and config.db_path.exists():  # exists() raises for a user who may not look
            store = JobStore(config.db_path, timeout=COMPLETION_STORE_TIMEOUT)
            words = [str(job.id) for job in store.jobs_to_show(finished=STATUS_FINISHED_SHOWN)[0]]
            store.close()
    except (EsxiWatcherError, OSError):
        pass
    sys.stdout.write("".join(f"{word}\n" for word in words))
    return 0


def _logs(config: Config, arguments: argparse.Namespace) -> int:
    store = _open_store(config)
    job = _job(store, arguments.job)
    log_path = config.logs_dir / f"{job.id}.log"
    if not log_path.exists():
        raise UsageError(f"job {job.id} has no build log (state {job.state})")
    with open(log_path, "rb") as log_file:
        for chunk in iter(lambda: log_file.read(1 << 16), b""):
            sys.stdout.buffer.write(chunk)
    return 0


def _retry(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.retry import retry_job

    store = _open_store(config)
    job = retry_job(store, _job(store, arguments.job), config.drop_dir, arguments.target)
    print(f"job {job.id} is {job.state} again: {job.iso}" + (f" (target {arguments.target})" if arguments.target else ""))
    return 0


def _show(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.show import show_dict, show_text

    store = _open_store(config)
    job = _job(store, arguments.job)
    registrations = store.registrations(job.id)
    if arguments.json:
        print(json.dumps(show_dict(job, registrations), indent=2))
    else:
        print(show_text(job, registrations))
    return 0


def _rebuild(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.provenance import short
    from esxi_watcher.rebuild import rebuild_job

    store = _open_store(config)
    job = rebuild_job(store, _job(store, arguments.job), config)
    print(f"job {job.id} queued: {job.iso} ({job.iso_path}) with today's template and kickstart (fingerprint "
          f"{short(job.fingerprint)}…), a rebuild of job {arguments.job}; `esxi-watcher show {job.id}` once built")
    return 0


def _forget(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.build import SHA256_SUFFIX
    from esxi_watcher.store import FINAL_STATES

    store = _open_store(config)
    job = _job(store, arguments.job)
    if job.state not in FINAL_STATES:
        raise UsageError(f"job {job.id} is {job.state}: only finished jobs can be forgotten")
    store.delete(job.id)
    if job.artifact and Path(job.artifact).parent == config.artifacts_dir:
        for suffix in (SHA256_SUFFIX, ""):
            Path(f"{job.artifact}{suffix}").unlink(missing_ok=True)
    print(f"forgot job {job.id} ({job.iso}) and its kept image; its ISO is where it was: {job.iso_path}")
    return 0


def _build(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher import oneshot

    if arguments.output is not None and not arguments.no_register:
        raise UsageError("--output goes with --no-register (a registered image is not kept)")
    request = oneshot.Request(iso=arguments.iso, target=arguments.target, register=not arguments.no_register,
                              output=arguments.output)
    return oneshot.run(config, request)


def _doctor(config: Config, arguments: argparse.Namespace) -> int:
    from esxi_watcher.doctor import exit_code, run_checks
    from esxi_watcher.logs import configure_command_logging

    configure_command_logging()
    checks = []
    for check in run_checks(config):
        checks.append(check)
        if not arguments.json:
            print(check.line(), flush=True)
    if arguments.json:
        print(json.dumps([check.to_dict() for check in checks], indent=2))
    return exit_code(checks)
