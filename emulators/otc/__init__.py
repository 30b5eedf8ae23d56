"""Emulator of IBM Cloud Toolchain API v2 and the IAM token endpoint, plus an "OTC platform" driver.

Run it with ``python -m emulators.otc --port 8090 --api-key KEY``; use it from tests through
:class:`emulators.otc.testing.OtcEmulator`. Behaviour and deliberate simplifications are described in
``emulators/otc/README.md``.
"""
