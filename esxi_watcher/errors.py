"""Named errors: each has a fixed meaning and the exit code the CLI returns for it."""


class EsxiWatcherError(Exception):
    """Base of every error esxi-watcher raises on purpose; its message is one line for the operator."""

    exit_code = 1


class ConfigError(EsxiWatcherError):
    """The configuration file is missing, unreadable or holds bad values (all of them listed)."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class BuildFailed(EsxiWatcherError):
    """The Packer build failed; the message carries the last lines of its log."""

    def __init__(self, reason: str, transient: bool = False):
        self.transient = transient
        super().__init__(reason)


class BuildOutOfSpace(BuildFailed):
    """The build ran out of disk space ("No space left on device"): the job waits for space."""


class BuildStopped(BuildFailed):
    """The build was stopped on purpose (the daemon is shutting down); it did not fail by itself."""

    def __init__(self, reason: str):
        super().__init__(reason, transient=True)


class BadKickstartSettings(BuildFailed):
    """build.kickstart or build.root_password_file cannot be used (an unreadable or open file, a
    password ESXi refuses, a template with no place for it): the job fails before Packer starts."""

    def __init__(self, reason: str):
        super().__init__(reason, transient=False)


class BuildLockUnavailable(EsxiWatcherError):
    """The host's build lock file (build.lock_file) cannot be opened."""


class MaasError(EsxiWatcherError):
    """MAAS refused the image for a reason retrying will not fix."""


class MaasAuthError(MaasError):
    """MAAS answered 401/403: the API key is wrong, revoked or not an admin's."""


class BytesHeldElsewhere(MaasError):
    """MAAS 3.8+ already holds these exact bytes under another image; uploading them would break it."""


class MaasUnavailable(EsxiWatcherError):
    """MAAS could not be reached or answered 5xx: worth retrying later."""


class ImageNotComplete(MaasUnavailable):
    """The upload finished but MAAS did not call the image complete in time (still syncing)."""


class MissingApiKey(EsxiWatcherError):
    """The MAAS API key file does not exist; the message says which file to create."""

    exit_code = 2


class BadApiKeyFile(EsxiWatcherError):
    """The MAAS API key file is readable by others, unreadable or does not hold a key."""

    exit_code = 2


class StoreUnavailable(EsxiWatcherError):
    """The job store cannot be written (a full or read-only state dir): work waits until it can."""


class StoreLocked(StoreUnavailable):
    """Another process holds a lock on the job store that keeps this one from writing it."""

    def __init__(self, path: object):
        self.path = path
        super().__init__(f"the job store {path} is locked by another process")


class StoreNotADatabase(EsxiWatcherError):
    """The job store file is not an SQLite database, or a damaged one (truncated, overwritten)."""

    def __init__(self, path: object, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"the job store {path} is not a database ({reason})")


class NotRetryable(EsxiWatcherError):
    """`esxi-watcher retry` cannot put this job (or its registration on a target) back in line."""

    exit_code = 2


class AlreadyRunning(EsxiWatcherError):
    """Another esxi-watcher daemon already works on this state dir or drop dir."""

    def __init__(self, key: str, folder: object, holder: str):
        self.key = key
        self.folder = folder
        self.holder = holder
        super().__init__(f"another esxi-watcher already works on {key} {folder}: {holder}")


class NotRebuildable(EsxiWatcherError):
    """`esxi-watcher rebuild` cannot queue this job's ISO again (not finished, ISO gone or changed,
    recipe unchanged)."""

    exit_code = 2
