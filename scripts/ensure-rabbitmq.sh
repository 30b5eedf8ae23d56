#!/usr/bin/env bash
# Make sure the machine's RabbitMQ answers on 127.0.0.1:5672 with the management API on 15672.
# Installs it from Debian's packages when missing, starts it when stopped. Idempotent.
set -euo pipefail

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "ensure-rabbitmq: installing rabbitmq-server from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq rabbitmq-server >/dev/null
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "ensure-rabbitmq: starting rabbitmq-server"
  rabbitmq-server -detached
fi
for _ in $(seq 1 60); do
  rabbitmqctl -q await_startup >/dev/null 2>&1 && break
  sleep 1
done
rabbitmqctl -q await_startup

if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi
for _ in $(seq 1 60); do
  curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "ensure-rabbitmq: management API did not come up on 15672" >&2
exit 1
