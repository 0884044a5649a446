"""`esxi-watcher build ISO`: the daemon's pipeline once, in the foreground, for a first try on a new
host or a CI job: inspect the ISO, build it with the configured template, register the image on
every target (or the one named), or keep it as a file (--no-register).

It needs neither the daemon nor its job store, and runs beside a running daemon: its build
processes carry a marker of their own (ESXI_WATCHER_JOB=oneshot-<pid>), so neither's host clean-up
touches the other's builds; its work dir is state_dir/oneshot/<marker>/, which the daemon never
reads; and it takes the host's build lock (build.lock_file) like the daemon's build step, so the
two build one at a time. It records no job (the daemon's store and status are about the drop dir)
and posts no banner: it prints.

MAAS away is not waited for: the run says so and exits 1 (a CI job should fail, not hang for
hours); run it again later. Exit codes: 0 done, 1 failed, 2 bad input, 130 interrupted
(SIGINT/SIGTERM: the build's processes are ended, its work dir removed, a half-made MAAS resource
deleted).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import structlog

from esxi_watcher import build, host, maas, procfs
from esxi_watcher.buildlock import BuildLock
from esxi_watcher.config import Config, TargetConfig
from esxi_watcher.errors import BuildFailed, EsxiWatcherError, MaasError, MaasUnavailable
from esxi_watcher.iso import IsoFacts, inspect_iso
from esxi_watcher.logs import add_secret, configure_logging, redact
from esxi_watcher.naming import distinct_name, resource_name
from esxi_watcher.progress import BuildMonitor, JobProgress, bar_line, clock, human_size

log = structlog.get_logger(__name__)

DONE, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
REDRAW = 0.5  # how often the terminal line is drawn again (and the serial console read)
PLAIN_UPLOAD_STEP = 0.1  # without a terminal, a line per 10 % of an upload
ONESHOT_MARKER = re.compile(r"oneshot-[0-9]+")


class BadInput(EsxiWatcherError):
    exit_code = BAD_INPUT


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: the run ends, leaving nothing behind."""


@dataclass(frozen=True)
class Request:
    iso: Path
    target: str | None  # None: every configured target
    register: bool
    output: Path | None  # --no-register: where the image goes (None: the current folder)


def run(config: Config, request: Request, out: TextIO = sys.stdout) -> int:
    """Given the configuration and what was asked, build (and register) once; return the exit code."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        return OneShot(config, request, stop, Screen(out)).run()
    except BadInput as error:
        print(f"esxi-watcher: {error}", file=sys.stderr)
        return BAD_INPUT
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Screen:
    """What the run shows: on a terminal one line drawn again and again; otherwise plain
    timestamped lines, one per stage change and per 10 % of an upload."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.terminal = out.isatty()
        self.progress: JobProgress | None = None
        self._lock = threading.Lock()
        self._said: tuple[str, str | None, int] | None = None
        self._drawn = False

    def show(self, now: float) -> None:
        """Show where the job is now (called on each change and every REDRAW seconds)."""
        with self._lock:
            progress = self.progress
            if progress is None:
                return
            if self.terminal:
                self.out.write("\r\x1b[K" + bar_line(progress, now))
                self._drawn = True
            else:
                step = int((progress.fraction or 0) / PLAIN_UPLOAD_STEP) if progress.uploading else -1
                said = (progress.stage, progress.target, step)
                if said == self._said:
                    return
                self._said = said
                self.out.write(f"{time.strftime('%H:%M:%S')} {progress.text(now)}\n")
            self.out.flush()

    def say(self, text: str) -> None:
        """Print a line of its own (a result, a wait, an error) above the progress line."""
        with self._lock:
            if self._drawn:
                self.out.write("\r\x1b[K")
                self._drawn = False
            prefix = "" if self.terminal else f"{time.strftime('%H:%M:%S')} "
            self.out.write(f"{prefix}{text}\n")
            self.out.flush()


class OneShot:
    def __init__(self, config: Config, request: Request, stop: threading.Event, screen: Screen) -> None:
        self.config = config
        self.request = request
        self.stop = stop
        self.screen = screen
        self.marker = f"oneshot-{os.getpid()}"
        self.root = config.state_dir / "oneshot"
        self.workdir = self.root / self.marker
        self.log_path = self.root / f"{self.marker}.log"
        self.pgid: int | None = None
        self.keep_log = False

    # ----- the run -----

    def run(self) -> int:
        targets = self._targets()
        facts = self._inspect()
        names = {target.name: resource_name(target.name_template, facts) for target in targets}
        output = self._output(names) if not self.request.register else None
        keys = self._api_keys(targets) if self.request.register else {}
        self._prepare()
        progress = JobProgress(_stem(self.request.iso.name), now=time.monotonic())
        self.screen.progress = progress
        try:
            artifact = self._build(progress)
            if output is not None:
                self._keep(artifact, output)
                return DONE
            return self._register_all(targets, keys, facts, names, artifact, progress)
        except Interrupted:
            self.screen.say("interrupted: nothing is left behind")
            return INTERRUPTED
        except OSError as error:  # the output folder full or read-only, the state dir gone
            self.keep_log = True
            self.screen.say(f"failed: {error}")
            return FAILED
        except BuildFailed as error:
            self.keep_log = True
            self.screen.say(f"build failed: {redact(str(error))}")
            self.screen.say(f"the whole build log: {self.log_path}")
            return FAILED
        finally:
            self._clean_up()

    def _targets(self) -> list[TargetConfig]:
        if self.request.target is None:
            return list(self.config.targets)
        target = self.config.target(self.request.target)
        if target is None:
            known = ", ".join(t.name for t in self.config.targets)
            raise BadInput(f"no MAAS target named {self.request.target!r} in the configuration (known: {known})")
        return [target]

    def _inspect(self) -> IsoFacts:
        iso = self.request.iso
        if not os.path.exists(iso):
            raise BadInput(f"{iso}: no such file")
        if not iso.is_file():
            raise BadInput(f"{iso}: not an ISO file (a folder, FIFO or device)")
        facts = inspect_iso(iso)
        if not facts.esxi:
            raise BadInput(f"{iso}: not an ESXi installer ISO: {facts.reason}")
        self.screen.say(f"{iso.name}: VMware ESXi {facts.release} build {facts.build}"
                        + (f", {facts.vendor} image" if facts.vendor else ""))
        return facts

    def _output(self, names: dict[str, str]) -> Path:
        """Where --no-register puts the image: --output, or <name with dashes>.dd.gz here."""
        output = self.request.output
        if output is None:
            name = next(iter(names.values()), None) or _stem(self.request.iso.name)
            output = Path.cwd() / (name.replace("/", "-") + ".dd.gz")
        if os.path.lexists(output):
            raise BadInput(f"{output} exists: esxi-watcher never overwrites a file; remove it or give --output")
        if not output.parent.is_dir():
            raise BadInput(f"{output.parent} is not a folder")
        return output

    def _api_keys(self, targets: list[TargetConfig]) -> dict[str, str]:
        if not targets:
            raise BadInput("no MAAS target is configured: give --no-register to keep the image as a file")
        keys = {}
        for target in targets:
            try:
                keys[target.name] = maas.read_api_key(target.api_key_file)
            except EsxiWatcherError as error:
                raise BadInput(f"MAAS {target.name}: {error}") from None
            add_secret(keys[target.name])
        return keys

    def _prepare(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BadInput(f"cannot make {self.root}: {error.strerror} (state_dir)") from None
        self._log_file = open(self.log_path, "a", encoding="utf-8")
        configure_logging("json", self.config.log.level, stream=self._log_file)

    # ----- the build -----

    def _build(self, progress: JobProgress) -> Path:
        config = self.config.build
        if self.stop.is_set():
            raise Interrupted()
        self._check_host()
        lock = BuildLock(config.lock_file)
        if not lock.acquire(self.stop, on_wait=self.screen.say):
            raise Interrupted()
        try:
            self._clean_after_killed_runs()
            monitor = BuildMonitor(self.workdir / config.template_dir.name / config.console_log,
                                   on_stage=lambda stage: self._stage(progress, stage))
            progress.build_started = time.monotonic()
            self.screen.show(progress.build_started)
            ticker = _Ticker(lambda: (monitor.poll(), self.screen.show(time.monotonic())))
            try:
                artifact = build.run_build(
                    job_id=self.marker, template_dir=config.template_dir, command=config.command,
                    artifact_name=config.artifact, iso=self.request.iso, workdir=self.workdir,
                    log_path=self.log_path, timeout=config.timeout, build_config=config,
                    on_line=monitor.packer_line,
                    on_start=self._started, stop_event=self.stop)
            except BuildFailed as error:
                if self.stop.is_set():
                    raise Interrupted() from None
                # The console is the guest's own text: an installer quoting its kickstart could show the password.
                raise BuildFailed(redact(monitor.explain(str(error)))) from None
            finally:
                ticker.stop()
        finally:
            self._end_build_processes()  # while the lock is held: no other build of the host runs
            lock.release()
        self._stage(progress, "done")
        self.screen.say(f"built {artifact.name} ({human_size(artifact.stat().st_size)}) in "
                        f"{clock(time.monotonic() - progress.build_started)}")
        return artifact

    def _clean_after_killed_runs(self) -> None:
        """End what one-shot builds whose esxi-watcher was killed (kill -9, a crash) left: their
        processes, mounts and work dirs (their logs stay). Runs while holding the build lock, so
        no other build runs; a one-shot still alive is never touched."""
        markers = {info.job_id for info in host.find_build_processes()
                   if info.job_id and ONESHOT_MARKER.fullmatch(info.job_id)}
        markers |= {entry.name for entry in self.root.iterdir() if entry.is_dir() and ONESHOT_MARKER.fullmatch(entry.name)}
        dead = {marker for marker in markers if marker != self.marker and not _oneshot_alive(marker)}
        if not dead:
            return
        host.clean_host(live_jobs=set(), dead_jobs=dead, work_root=self.root)
        for marker in sorted(dead):
            build.remove_workdir(self.root / marker)
        self.screen.say(f"cleaned up after killed runs: {', '.join(sorted(dead))}")

    def _check_host(self) -> None:
        from esxi_watcher import kvm

        config = self.config.build
        if kvm.template_wants_kvm(config.template_dir, config.command):
            verdict = kvm.kvm_can_run_guests(cache_dir=self.config.state_dir)
            if not verdict.ok:
                raise BuildFailed(verdict.reason)
        needed = build.space_needed(config.template_dir, self.request.iso.stat().st_size)
        free = shutil.disk_usage(self.root).free
        if free < needed:
            raise BuildFailed(f"no space left in {self.root}: {human_size(free)} free, a build needs about "
                              f"{human_size(needed)} (the ISO and the template's disk)")

    def _started(self, pid: int) -> None:
        self.pgid = pid

    def _stage(self, progress: JobProgress, stage: str) -> None:
        if progress.build_stage(stage, time.monotonic()):
            log.info("oneshot.stage", stage=stage)
            self.screen.show(time.monotonic())

    def _keep(self, artifact: Path, output: Path) -> None:
        """Move the image to output, never over a file that appeared there meanwhile."""
        partial = output.parent / f".{output.name}.{self.marker}"
        try:
            shutil.move(str(artifact), partial)  # a copy when output is on another file system
        except BaseException:
            partial.unlink(missing_ok=True)  # never half an image in the output folder
            raise
        try:
            os.link(partial, output)  # fails if a file of that name appeared meanwhile
        except FileExistsError:
            raise BadInput(f"{output} appeared during the build: esxi-watcher never overwrites a file") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(output):
                raise BadInput(f"{output} appeared during the build: esxi-watcher never overwrites a file") from None
            os.rename(partial, output)
        finally:
            partial.unlink(missing_ok=True)
        self.screen.say(f"image kept (not registered): {output}")

    # ----- the registrations -----

    def _register_all(self, targets: list[TargetConfig], keys: dict[str, str], facts: IsoFacts,
                      names: dict[str, str], artifact: Path, progress: JobProgress) -> int:
        sha256 = _iso_sha256(self.request.iso, self.stop)
        outcome = DONE
        for target in targets:
            if self.stop.is_set():
                raise Interrupted()
            endpoint = maas.Endpoint(url=target.url, api_key=keys[target.name],
                                     request_timeout=target.request_timeout)
            try:
                registration = self._register(target, endpoint, facts, names[target.name], sha256, artifact, progress)
            except asyncio.CancelledError:
                raise Interrupted() from None
            except MaasUnavailable as error:
                self.screen.say(f"MAAS {target.name} is away: {redact(str(error))}; nothing was registered "
                                f"there: run again once it answers")
                outcome = FAILED
            except MaasError as error:
                self.screen.say(f"MAAS {target.name} refused the image: {redact(str(error))}")
                outcome = FAILED
            else:
                what = "registered" if registration.uploaded else "already held"
                self.screen.say(f"{what} {registration.name} on {target.name} (boot resource "
                                f"{registration.resource_id}, set {registration.set_version})")
        return outcome

    def _register(self, target: TargetConfig, endpoint: maas.Endpoint, facts: IsoFacts, name: str, sha256: str,
                  artifact: Path, progress: JobProgress) -> maas.Registration:
        from esxi_watcher.daemon.register_step import title_of, upload

        artifact_sha256 = build.artifact_sha256(artifact)
        held = asyncio.run(maas.name_holds_other_bytes(endpoint, name=name, architecture=target.architecture,
                                                       sha256=artifact_sha256))
        if held:  # the daemon's rule: never silently replace what the next deployment of a name installs
            name = distinct_name(name, sha256)
            self.screen.say(f"MAAS {target.name} holds other bytes as {resource_name(target.name_template, facts)}:"
                            f" this image is {name}")
        progress.upload_begins(name, target.name, artifact.stat().st_size, time.monotonic())
        self.screen.show(time.monotonic())
        ticker = _Ticker(lambda: self.screen.show(time.monotonic()))

        def uploaded(fraction: float) -> None:
            progress.uploaded(fraction, time.monotonic())
            self.screen.show(time.monotonic())

        try:
            return upload(endpoint, target, name=name, title=title_of(target, facts.to_dict(), sha256, name),
                          artifact=artifact, stop_event=self.stop, progress=uploaded)
        finally:
            ticker.stop()

    # ----- the end -----

    def _end_build_processes(self) -> None:
        """End what the build left running or mounted (this run's marker only: never the daemon's)."""
        report = host.clean_host(live_jobs=set(), dead_jobs={self.marker}, work_root=self.root,
                                 process_groups={self.pgid: self.marker} if self.pgid else None)
        if report.failed:
            self.keep_log = True
            self.screen.say(f"could not end everything the build left: see {self.log_path}")

    def _clean_up(self) -> None:
        """Remove the run's work dir; its log stays only after a failure."""
        left = build.remove_workdir(self.workdir)
        if left:
            self.keep_log = True
            self.screen.say(f"could not remove {', '.join(map(str, left))}")
        log_file = getattr(self, "_log_file", None)
        if log_file is not None:
            log_file.close()
            if not self.keep_log:
                self.log_path.unlink(missing_ok=True)
        try:
            self.root.rmdir()  # when no other one-shot uses it
        except OSError:
            pass


class _Ticker:
    """Calls a function every REDRAW seconds in a thread of its own until stopped."""

    def __init__(self, tick) -> None:
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(tick,), name="ticker", daemon=True)
        self._thread.start()

    def _run(self, tick) -> None:
        while not self._done.wait(REDRAW):
            try:
                tick()
            except Exception:  # noqa: BLE001 - the display is a courtesy; the build goes on
                log.exception("oneshot.tick_failed")

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def _oneshot_alive(marker: str) -> bool:
    """Whether the esxi-watcher build that gave this marker (oneshot-<pid>) still runs."""
    arguments = procfs.command_line(int(marker.partition("-")[2]))
    return "build" in arguments and any("esxi_watcher" in argument or "esxi-watcher" in argument
                                        for argument in arguments)


def _iso_sha256(iso: Path, stop: threading.Event) -> str:
    from esxi_watcher.intake import sha256_of

    descriptor = os.open(iso, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        digest = sha256_of(descriptor, stop)
    finally:
        os.close(descriptor)
    if digest is None:
        raise Interrupted()
    return digest


def _stem(name: str) -> str:
    return name[:-4] if name.lower().endswith(".iso") else name
