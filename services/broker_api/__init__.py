"""broker-api: the OTC brokers for Kabanero (``kabanero-broker``, ``kabanero-events-broker``) and
Tekton (``tekton-broker``); setting ``BROKERS`` says which a deployment serves.

Serves OTC's broker contract (docs/architecture.md §3), keeps one record per service instance in MongoDB
(``service_instances``, credentials encrypted) and publishes a ``service.<kind>.<event>`` CloudEvent
after each committed change through a per-document outbox, so no committed change is lost when
RabbitMQ is briefly unreachable.
"""
