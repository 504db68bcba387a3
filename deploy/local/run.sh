#!/usr/bin/env bash
# `make run`: builds jobpipe and runs it on this machine in the foreground, with readable logs.
# Ctrl-C drains and stops every process.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --workspace --bins
bin=target/debug
grpcurl=.tools/venv/bin/grpcurl
export JOBPIPE__LOG__FORMAT="${JOBPIPE__LOG__FORMAT:-text}"
producer_addr="127.0.0.1:${JOBPIPE_RUN_GRPC_PORT:-50051}"

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping (draining in-flight work)..."
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  echo "run: stopped."
  exit 0
}
trap stop INT TERM EXIT

# Each service runs in its own session, so the terminal's Ctrl-C reaches only this script, which
# then asks each service once to drain (a second signal would force it down).
start() { setsid "$@" & pids+=($!); }

start env JOBPIPE__GRPC__LISTEN="$producer_addr" "$bin/jobpipe-producer"

for _ in $(seq 1 120); do
  "$bin/jobpipe" --addr "http://$producer_addr" health >/dev/null 2>&1 && break
  sleep 0.5
done
"$bin/jobpipe" --addr "http://$producer_addr" health >/dev/null

cat <<MSG

  jobpipe is running: producer on $producer_addr (admin and metrics on http://127.0.0.1:9090).

  Submit a job with the CLI:
    $bin/jobpipe submit email.send --payload '{"to":"ada@example.com"}' --meta tenant=acme

  Or with grpcurl (server reflection):
    $grpcurl -plaintext -d '{"job":{"type":"email.send","payload":"aGVsbG8="}}' \\
      $producer_addr jobpipe.v1.JobService/SubmitJob

  Confirmed jobs wait in RabbitMQ:  rabbitmqctl list_queues name messages | grep jobpipe

  Ctrl-C stops everything.

MSG
wait
