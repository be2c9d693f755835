"""Running `tandem serve` as a child process: for the benchmark harness and the tests.

The child is the real service (its own embedded Ray cluster, engine and gRPC server); this class
only starts it on a free port, waits for its "listening" line, and stops it with SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

_LISTENING = re.compile(r"tandem listening on (\S+)")
_HTTP = re.compile(r"OpenAI API on (\S+)/v1")


class ServiceProcess:
    def __init__(
        self,
        config: dict[str, Any] | None = None,
        startup_timeout_s: float = 300,
        command: Sequence[str] = ("tandem.cli",),
    ) -> None:
        self.config = config or {}
        # Run as `python -m COMMAND... serve --config FILE`: tandem's CLI, or a module that
        # registers more draft sources first (the bench's controlled acceptance).
        self.command = list(command)
        self.startup_timeout_s = startup_timeout_s
        self.address: str | None = None  # gRPC host:port
        self.http_url: str | None = None  # the OpenAI API's base URL, without /v1
        self.proc: subprocess.Popen | None = None
        self.log_lines: list[str] = []
        self._config_file: Path | None = None

    def start(self) -> str:
        """Start the service and return its host:port once it answers."""
        ports = {"port": 0, "http_port": 0}  # free ports: services run side by side
        config = {**self.config, "server": {**ports, **self.config.get("server", {})}}
        fd, name = tempfile.mkstemp(prefix="tandem-", suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f)
        self._config_file = Path(name)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *self.command, "serve", "--config", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        found = threading.Event()
        threading.Thread(target=self._read_output, args=(found,), daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log_lines[-40:])
                raise RuntimeError(f"tandem serve did not start:\n{tail}")
        return self.address

    def _read_output(self, found: threading.Event) -> None:
        for line in self.proc.stdout:
            self.log_lines.append(line.rstrip())
            if self.http_url is None and (match := _HTTP.search(line)):
                self.http_url = match.group(1)
            if self.address is None and (match := _LISTENING.search(line)):
                self.address = match.group(1)
            if line.startswith("try: "):  # the last line of the announcement
                found.set()

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM (drain, then clean stop); SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._config_file is not None:
            self._config_file.unlink(missing_ok=True)
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
