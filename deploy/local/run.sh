#!/usr/bin/env bash
# `make run`: builds jobpipe and runs it on this machine in the foreground: a producer, two
# consumers, the example Python HTTP worker they send `greet` jobs to, and a short demo. Ctrl-C
# drains and stops every process.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --workspace --bins
bin=target/debug
grpcurl=.tools/venv/bin/grpcurl
export JOBPIPE__LOG__FORMAT="${JOBPIPE__LOG__FORMAT:-text}"
# Predictable backoff for the demo: 1 s, 2 s, 4 s... (production default: full jitter).
jitter="${JOBPIPE__RETRY__JITTER:-none}"
producer="127.0.0.1:${JOBPIPE_RUN_GRPC_PORT:-50051}"
logs=$(mktemp -d /tmp/jobpipe-run.XXXX)

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping (draining in-flight work)..."
  [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[@]}" 2>/dev/null || true
  wait || true
  echo "run: stopped. Logs are in $logs."
  exit 0
}
trap stop INT TERM EXIT

# Each service runs in its own session, so the terminal's Ctrl-C reaches only this script, which
# then asks each service once to drain (a second signal would force it down). Their logs go to
# files while the demo runs, then follow in this terminal.
start() {
  local name=$1; shift
  setsid env "$@" > "$logs/$name.log" 2>&1 &
  pids+=($!)
}

worker_port=8088  # as in deploy/local/consumer.toml
start producer JOBPIPE__GRPC__LISTEN="$producer" JOBPIPE__ADMIN__LISTEN=127.0.0.1:9090 "$bin/jobpipe-producer"
start worker .tools/venv/bin/python examples/python-http-worker/worker.py --port "$worker_port"
for n in 1 2; do
  start consumer-$n JOBPIPE__ADMIN__LISTEN=127.0.0.1:909$n JOBPIPE__CONSUMER__INSTANCE=consumer-$n \
    JOBPIPE__RETRY__JITTER="$jitter" "$bin/jobpipe-consumer" --config deploy/local/consumer.toml
done

echo "run: starting a producer and two consumers (logs in $logs)..."
for _ in $(seq 1 120); do
  ready=1
  "$bin/jobpipe" --addr "http://$producer" health >/dev/null 2>&1 || ready=0
  for port in 9091 9092; do
    (exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && grep -q "200 OK" <&3) 2>/dev/null || ready=0
  done
  [ $ready = 1 ] && break
  sleep 0.5
done
if [ $ready != 1 ]; then
  echo "run: the services did not become ready:" >&2
  tail -n 3 "$logs"/*.log >&2
  exit 1
fi

echo
"$bin/jobpipe" --addr "http://$producer" demo --with-worker --consumers 127.0.0.1:9091,127.0.0.1:9092 || true
echo
"$bin/jobpipe" --addr "http://$producer" dlq list || true

cat <<MSG

  jobpipe keeps running: producer on $producer, consumers' metrics on :9091 and :9092,
  producer metrics on :9090, the Python worker for \`greet\` jobs on :$worker_port
  (routes in deploy/local/consumer.toml).

  Submit a job with the CLI:
    $bin/jobpipe submit sleep --payload 2s
    $bin/jobpipe submit fail --payload 2 --meta tenant=acme       # fails twice, then succeeds
    $bin/jobpipe submit noop --delay 30s                          # runs in 30 s
    $bin/jobpipe submit greet --payload Grace                     # the Python worker greets
    $bin/jobpipe submit greet --payload retry-after:3             # 429 Retry-After: 3, then 204

  Or with grpcurl (server reflection):
    $grpcurl -plaintext -d '{"job":{"type":"noop","payload":"aGVsbG8="}}' \\
      $producer jobpipe.v1.JobService/SubmitJob

  Dead letters and queues, with the CLI:
    $bin/jobpipe dlq list                                  # what failed, and why
    $bin/jobpipe dlq show <JOB ID>                         # its whole history
    $bin/jobpipe dlq replay --kind exhausted --dry-run     # what a replay would run again
    $bin/jobpipe dlq replay --job-id <JOB ID>              # a fresh first attempt
    $bin/jobpipe queues                                    # ready, dead, consumers, delayed
    $bin/jobpipe watch                                     # the same, live
  Ctrl-C stops everything. The services' logs follow:

MSG
tail -n 0 -F "$logs"/*.log &
pids+=($!)
wait
