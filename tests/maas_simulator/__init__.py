"""A MAAS region API simulator for tests and the demo (boot resources, version, notifications).

    from tests.maas_simulator import MaasSimulator
    with MaasSimulator(tmp_path / "maas", mode="3.8") as maas:
        ...  # maas.url, maas.api_key, maas.inject(...), maas.file_bytes(...)

Run alone: python -m tests.maas_simulator --state-dir DIR [--mode 3.8] [--port N]
"""

from __future__ import annotations

from .faults import Fault
from .filestores import ImageUnavailable
from .simulator import DEFAULT_VERSIONS, MODES, REALISTIC_VERSIONS, MaasSimulator

__all__ = [
    "DEFAULT_VERSIONS",
    "Fault",
    "ImageUnavailable",
    "MaasSimulator",
    "MODES",
    "REALISTIC_VERSIONS",
]
