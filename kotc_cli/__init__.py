"""``kabanero-otc``: the operator's command line (status, dead letters, resync, plan, doctor).

It reads what the services read (their environment names, or the run file ``make run`` leaves in
``.run/stack.json``) and talks to the same RabbitMQ, MongoDB, Kubernetes API and OTC. Read-only unless
a subcommand says otherwise (``dead-letters replay|purge``, ``resync``).
"""
