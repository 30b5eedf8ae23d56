"""The consumer's policies, one module each; :class:`shared.amqp.consumer.Consumer` composes them."""
