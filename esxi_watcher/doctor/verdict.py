"""A doctor check's verdict: PASS, WARN or FAIL, what was found, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from esxi_watcher.logs import redact

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass(frozen=True)
class Check:
    """One verdict: `name` says what was checked (maas[site-a] reachable), `fix` what to do."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        """Return the check as one line of text: status, name, detail and the fix."""
        fields = self.to_dict()
        text = f"{self.status:<6}{fields['name']}: {fields['detail']}"
        return text + (f" (fix: {fields['fix']})" if self.fix and self.status != PASS else "")

    def to_dict(self) -> dict[str, str]:
        """Return the fields, each one line with secrets masked (details may quote what a server said)."""
        return {key: " ".join(redact(value).split()) for key, value in asdict(self).items()}
