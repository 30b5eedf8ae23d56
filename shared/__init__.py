"""Code shared by two or more kabanero-otc services: settings, logging, lifecycle, AMQP, MongoDB."""
