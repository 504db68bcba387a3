#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers for jobpipe on this machine.
#
# Uses the broker at JOBPIPE__AMQP__URL (default amqp://guest:guest@127.0.0.1:5672/%2f) when it
# is reachable. Otherwise starts a local rabbitmq-server, installing Debian's package first when it
# is missing (needs root). Otherwise says exactly what to do. Never stops or restarts a broker.
set -euo pipefail

url="${JOBPIPE__AMQP__URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"
[ "$port" = "$hostport" ] && port=5672

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

if reachable; then
  echo "broker: using RabbitMQ at $host:$port"
  exit 0
fi

if [ "$host" != "127.0.0.1" ] && [ "$host" != "localhost" ]; then
  echo "broker: nothing answers at $host:$port. Start that broker, or unset JOBPIPE__AMQP__URL to use a local one." >&2
  exit 1
fi

if [ "$(id -u)" != 0 ]; then
  echo "broker: nothing answers at $host:$port, and starting a local RabbitMQ needs root." >&2
  echo "        Run: sudo apt-get install -y rabbitmq-server && sudo rabbitmq-server -detached" >&2
  exit 1
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "broker: installing Debian's rabbitmq-server package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
fi

echo "broker: starting rabbitmq-server"
rabbitmq-server -detached
for _ in $(seq 1 120); do
  if reachable && rabbitmqctl -q await_startup >/dev/null 2>&1; then
    echo "broker: RabbitMQ is up at $host:$port"
    exit 0
  fi
  sleep 1
done
echo "broker: rabbitmq-server did not come up within 2 minutes; see /var/log/rabbitmq/" >&2
exit 1
