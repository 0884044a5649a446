"""python -m tests.maas_simulator: run a simulated MAAS region until SIGTERM or SIGINT.

The first line on stdout is the MAAS URL. With --api-key-file, the key is read from that
file, or written there (mode 0600) when the file does not exist yet.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from .simulator import MODES, MaasSimulator


def parse_arguments(argv):
    parser = argparse.ArgumentParser(prog="python -m tests.maas_simulator")
    parser.add_argument("--state-dir", required=True, help="where the region keeps its state")
    parser.add_argument("--mode", choices=MODES, default="3.8", help="MAAS storage behaviour")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key-file", help="read the API key here, or write it if absent")
    parser.add_argument("--version", help="the version string /version/ reports")
    parser.add_argument("--realistic-version", action="store_true",
                        help='report a version like "3.6.4-17013-g.abcdef"')
    parser.add_argument("--non-admin", action="store_true",
                        help="the API key is a non-admin user's: no creating boot resources")
    return parser.parse_args(argv)


def write_key(key: str, key_file: str) -> None:
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(key + "\n")


def main(argv=None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    key = None
    if arguments.api_key_file and os.path.exists(arguments.api_key_file):
        with open(arguments.api_key_file) as stream:
            key = stream.read().strip()
    simulator = MaasSimulator(arguments.state_dir, mode=arguments.mode, api_key=key,
                              host=arguments.host, port=arguments.port,
                              version=arguments.version,
                              realistic_version=arguments.realistic_version,
                              admin=not arguments.non_admin)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    simulator.start()
    if arguments.api_key_file and key is None:
        write_key(simulator.api_key, arguments.api_key_file)
    print(simulator.url, flush=True)
    try:
        while not stopping.wait(0.2):
            pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
