"""``agentauth dev`` as a real subprocess, for the fault tests (kill -9, limits, read-only store).

- :class:`DevServer`: the CLI started on a state directory, optionally with a ``preexec_fn``
  (a file-size limit, dropped capabilities); :meth:`DevServer.wait_ready` reads the ready line
  and the kubeconfig, :meth:`DevServer.api` gives an httpx client on the API server as admin,
  :meth:`DevServer.kill9` and :meth:`DevServer.terminate` end it for real.
- :func:`without_dac_override`: when the tests run as root, permission bits do not stop root, so a
  read-only store is emulated for real by starting the child without ``CAP_DAC_OVERRIDE`` and
  ``CAP_DAC_READ_SEARCH`` (dropped from its bounding set before exec; as a normal user this is a
  no-op and the bits apply anyway).
"""

from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.stack import BIN

READY = re.compile(r"^ready kubeconfig=(?P<path>\S+)$")
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2


def without_dac_override() -> None:
    """``preexec_fn``: the child cannot bypass file permissions (only matters for root)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


class DevServer:
    """One ``agentauth dev --dir DIRECTORY`` process (see the module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        preexec_fn: Callable[[], None] | None = None,
        arguments: tuple[str, ...] = (),
    ) -> None:
        self.directory = directory
        # Lives as long as the process; closed by close().
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(BIN / "agentauth"), "dev", "--dir", str(directory), *arguments],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            preexec_fn=preexec_fn,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.url = ""
        self.ca_path = directory / "ca.crt"
        self.admin_token = ""

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    @property
    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def wait_ready(self, timeout: float = 120.0) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                self.process.wait(10)
                raise AssertionError(
                    f"agentauth dev exited ({self.process.returncode}) before ready:\n"
                    f"{self.output}\n{self.stderr[-4000:]}"
                )
            self.output.append(line)
            match = READY.match(line)
            if match:
                kubeconfig = Path(match.group("path"))
                config = yaml.safe_load(kubeconfig.read_text())
                self.url = config["clusters"][0]["cluster"]["server"]
                users = {user["name"]: user["user"] for user in config["users"]}
                self.admin_token = users["admin"]["token"]
                return kubeconfig
        raise AssertionError(f"no ready line within {timeout}s: {self.output}\n{self.stderr}")

    def more_output(self, timeout: float = 10.0) -> list[str]:
        """The lines printed after the ready line (until none comes for ``timeout``)."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                return self.output
            if line is None:
                return self.output
            self.output.append(line)

    def api(self, **options: Any) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.ca_path)),
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=options.pop("timeout", 30.0),
            **options,
        )

    def async_api(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            verify=ssl.create_default_context(cafile=str(self.ca_path)),
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=options.pop("timeout", 30.0),
            **options,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self._stderr.close()
