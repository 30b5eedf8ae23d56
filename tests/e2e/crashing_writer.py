"""otc-writer with a fault the test injects: SIGKILL itself right after its n-th OTC write.

``python -m tests.e2e.crashing_writer N``, with the service's usual environment. The fault lives here,
in the test, not in product code: it wraps ``build`` with a ``Deps.after_otc_write`` hook.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from services.otc_writer.app import Deps, OtcWriter, build
from services.otc_writer.applier import WriteHook
from services.otc_writer.settings import Settings
from shared.lifecycle import run_service
from shared.settings import load_settings

log = logging.getLogger(__name__)


def crash_after(n: int) -> WriteHook:
    count = 0

    async def hook(op: str, ledger_id: str) -> None:
        nonlocal count
        count += 1
        if count >= n:
            log.critical("test fault: killing the process after an OTC write", extra={"op": op})
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def main() -> None:
    n = int(sys.argv[1])

    def crashing(settings: Settings) -> OtcWriter:
        return build(settings, deps=Deps(after_otc_write=crash_after(n)))

    run_service(lambda: load_settings(Settings, service="otc-writer"), crashing)


if __name__ == "__main__":
    main()
