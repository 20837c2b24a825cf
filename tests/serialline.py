"""A serial line for tests: two linked pseudo-terminals made by ``socat`` (Debian ``socat``).

For the OS and pyserial each end is a real tty, so Modbus RTU goes through the kernel's tty
layer exactly as on a USB-RS485 adapter; what a pty does not emulate is the line itself: baud
rate and timing (bytes arrive at once), and parity (Linux ptys drop PARENB, and this kernel
answers EINVAL when pyserial sets it a second time, so both ends use parity N).

``socat -d -d pty,raw,echo=0,link=DIR/sim pty,raw,echo=0,link=DIR/agent`` keeps the two
symlinks while it runs. :meth:`SerialLine.cut` stops it with SIGTERM, which closes both ptys
(their users read EIO: the line is gone) and removes the links; :meth:`SerialLine.start` again
makes a new pair behind the same two paths. SIGKILL would leave the links dangling, pointing at
pty numbers another process may get next.

A missing ``socat`` fails the test with the command that installs it, as a missing ``influxd``
does (tests/integration/conftest.py): these tests are part of ``make test``, never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

INSTALL_HINT = "install the Debian package socat (scripts/apt-install socat)"


class SerialLineError(Exception):
    """socat is missing or the pty pair did not come up."""


class SerialLine:
    """A socat pty pair with stable paths: :attr:`sim` for the simulator, :attr:`agent`."""

    def __init__(self, directory: Path) -> None:
        self.sim = directory / "sim"
        self.agent = directory / "agent"
        self.proc: subprocess.Popen[str] | None = None
        self.binary = shutil.which("socat")

    def start(self, timeout_s: float = 5.0) -> SerialLine:
        """Start socat and wait until both links point at a pty (not a sleep)."""
        if self.binary is None:
            raise SerialLineError(f"socat not found: {INSTALL_HINT}")
        if self.proc is not None:
            raise RuntimeError("the serial line is already up")
        ends = (f"pty,raw,echo=0,link={self.sim}", f"pty,raw,echo=0,link={self.agent}")
        self.proc = subprocess.Popen(
            [self.binary, "-d", "-d", *ends],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not (self._is_pty(self.sim) and self._is_pty(self.agent)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self._stop()
                raise SerialLineError(f"socat did not make the pty pair: {err.strip()}")
            time.sleep(0.01)
        return self

    @staticmethod
    def _is_pty(link: Path) -> bool:
        return link.is_symlink() and os.path.realpath(link).startswith("/dev/pts/")

    def cut(self) -> None:
        """The line is gone: socat stops, both ptys close, both links disappear."""
        self._stop()

    def _stop(self) -> str:
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        if proc.poll() is None:
            proc.terminate()
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return err or ""

    def close(self) -> None:
        """Stop socat if it runs (test teardown)."""
        self._stop()
