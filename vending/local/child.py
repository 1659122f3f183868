"""One function process of the embedded default: ``functions-framework``, tied to its launcher.

``python -m vending.local.child LAUNCHER_PID FUNCTIONS_FRAMEWORK_ARGS...`` (started by
``vending.local.launcher``). On Linux the process asks the kernel for SIGTERM when the launcher
dies (``PR_SET_PDEATHSIG``), so even a launcher killed with SIGKILL leaves no server listening;
the launcher stops it (and its workers, one process group) on Ctrl-C, SIGTERM and SIGHUP.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def tie_to(launcher_pid: int) -> None:
    """Ask for SIGTERM when the parent dies; exit now if it already has."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        except (OSError, AttributeError):  # no prctl: the launcher's own clean-up still applies
            pass
    if launcher_pid and os.getppid() != launcher_pid:
        sys.exit(1)


def main(argv: list[str]) -> None:
    tie_to(int(argv[0]))
    sys.argv = ["functions-framework", *argv[1:]]
    runpy.run_module("functions_framework", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
