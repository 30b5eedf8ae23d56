"""RabbitMQ plumbing: connection, topology (docs/architecture.md §4), confirmed publisher, ack-policy consumer."""

from shared.amqp.connection import AmqpConnection
from shared.amqp.consumer import Consumer, PermanentError, RetryableError
from shared.amqp.consuming.decode import DataModel, DataModels, Delivery
from shared.amqp.publisher import Publisher, PublishError, PublishUnavailable
from shared.amqp.topology import DEAD_EXCHANGE, EXCHANGE, QUEUES, Topology, declare_topology

__all__ = [
    "DEAD_EXCHANGE",
    "EXCHANGE",
    "QUEUES",
    "AmqpConnection",
    "Consumer",
    "DataModel",
    "DataModels",
    "Delivery",
    "PermanentError",
    "PublishError",
    "PublishUnavailable",
    "Publisher",
    "RetryableError",
    "Topology",
    "declare_topology",
]
