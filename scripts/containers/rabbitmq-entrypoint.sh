#!/bin/sh
# Entry point of the compose check's RabbitMQ stand-in (Debian's rabbitmq-server, base-images.sh).
# Takes the official image's RABBITMQ_DEFAULT_USER / RABBITMQ_DEFAULT_PASS, so docker-compose.yml's
# environment works unchanged, and logs to stdout like the official image.
set -eu
: "${RABBITMQ_DEFAULT_USER:?RABBITMQ_DEFAULT_USER is required}"
: "${RABBITMQ_DEFAULT_PASS:?RABBITMQ_DEFAULT_PASS is required}"
conf=/var/lib/rabbitmq/kotc-check.conf
umask 077
cat > "$conf" <<EOF
default_user = $RABBITMQ_DEFAULT_USER
default_pass = $RABBITMQ_DEFAULT_PASS
loopback_users = none
listeners.tcp.default = 5672
management.tcp.port = 15672
EOF
export RABBITMQ_CONFIG_FILE="$conf" RABBITMQ_LOGS=- RABBITMQ_SASL_LOGS=-
exec /usr/lib/rabbitmq/bin/rabbitmq-server
