"""otc-writer: the only component that writes to OTC (docs/architecture.md §2, §5).

It mirrors Kabanero event triggers as trigger tools in every toolchain a Kabanero Events service is
bound to, executes github-linker's ``otc.tool.*`` commands, and records every applied tool in a
ledger so redeliveries, restarts and a second replica never duplicate or lose an OTC write.
"""
