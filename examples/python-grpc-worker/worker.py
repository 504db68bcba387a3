#!/usr/bin/env python3
"""A gRPC worker for jobpipe, in Python with grpcio.

It implements `jobpipe.v1.Worker` from proto/jobpipe/v1/worker.proto. A jobpipe consumer whose
route points here (`target = "grpc://127.0.0.1:50051"`) calls `Handle` once per attempt of each
job. The call's status is the answer:

    OK                          success: the job is acknowledged
    a google.rpc.RetryInfo      retry after the detail's delay
      detail (any code)
    UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN
                                transient: retried with backoff while attempts remain
    any other code              permanent: dead-lettered at once
The status message becomes the error text in the job's history (never put secrets in it).

Delivery is at-least-once: the same job_id can arrive more than once. Make the work idempotent
on it. The call's deadline is the attempt's deadline; its metadata carries `traceparent` and,
when the route has a token, `authorization: Bearer <token>`.

    worker.py [--host 127.0.0.1] [--port 50051] [--token-file FILE] [--proto-root DIR]

  --port 0        a free port; the first line printed says which: {"listening": PORT}
  --token-file    require `authorization: Bearer <the file's content>`, else UNAUTHENTICATED
  --proto-root    where jobpipe/v1/worker.proto is (default: the repository's proto/); the
                  Python stubs are generated from it at start, with grpc_tools.protoc

Then it prints one JSON line per call (see `describe`).

Needs: grpcio, grpcio-tools, grpcio-status, googleapis-common-protos.

Try it (the payload picks the answer):

    Ada              OK (for job type "greet", logs a greeting)
    fail:2           UNAVAILABLE while attempt <= 2, then OK
    permanent        INVALID_ARGUMENT "cannot process this payload"
    retry-after:5    on attempt 1, RESOURCE_EXHAUSTED with a RetryInfo of 5 s; then OK
    sleep:1500       OK after 1.5 s
    big-error        INTERNAL with a 4 KiB message
    endless          no answer: sleeps until the call's deadline has passed
"""

import argparse
import concurrent.futures
import hmac
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DEFAULT_PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"

PRINT_LOCK = threading.Lock()


def emit(line):
    """Prints one JSON line, whole, whatever the other threads print."""
    with PRINT_LOCK:
        print(json.dumps(line), flush=True)


def load_stubs(proto_root):
    """Generates the Python stubs for worker.proto into a temporary directory and imports them."""
    if not (pathlib.Path(proto_root) / "jobpipe/v1/worker.proto").is_file():
        sys.exit(f"no jobpipe/v1/worker.proto under {proto_root} (see --proto-root)")
    out = pathlib.Path(tempfile.mkdtemp(prefix="jobpipe-worker-stubs-"))
    try:
        protoc = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}",
             f"--python_out={out}", f"--grpc_python_out={out}", "jobpipe/v1/worker.proto"],
        )
        if protoc.returncode != 0:
            sys.exit("generating the stubs from worker.proto failed (grpcio-tools installed?)")
        for package in (out / "jobpipe", out / "jobpipe" / "v1"):
            (package / "__init__.py").touch()
        sys.path.insert(0, str(out))
        from jobpipe.v1 import worker_pb2, worker_pb2_grpc

        return worker_pb2, worker_pb2_grpc
    finally:
        if str(out) in sys.path:
            sys.path.remove(str(out))
        shutil.rmtree(out)  # imported: the files are no longer needed


class InFlight:
    """How many calls are being handled at once (tests check a concurrency limit with it)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0

    def enter(self):
        with self.lock:
            self.count += 1
            return self.count

    def leave(self):
        with self.lock:
            self.count -= 1


def number(text):
    """A whole number, or None."""
    return int(text) if text and text.isascii() and text.isdigit() else None


def timestamp(ts):
    """A google.protobuf.Timestamp as RFC 3339, or None when unset."""
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


class Failure(Exception):
    """A failed call: a gRPC status code, a message, and a RetryInfo delay in seconds or None."""

    def __init__(self, outcome, code, message, retry_after=None):
        super().__init__(message)
        self.outcome, self.code, self.message = outcome, code, message
        self.retry_after = retry_after


def decide(text, attempt, job_type):
    """Picks the answer from the payload: raises Failure, or returns (outcome, seconds to sleep
    first or None for "until the deadline has passed", greeting or None)."""
    word, _, n = text.partition(":")
    n = number(n)
    if word == "fail" and n is not None:
        if attempt <= n:
            raise Failure("transient", grpc.StatusCode.UNAVAILABLE,
                          f"failing on purpose: attempt {attempt} of {text}")
    elif word == "retry-after" and n is not None:
        if attempt == 1:
            raise Failure("retry-after", grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"busy: retry after {n} s", retry_after=n)
    elif word == "sleep" and n is not None:
        return "success", n / 1000, None
    elif text == "permanent":
        raise Failure("permanent", grpc.StatusCode.INVALID_ARGUMENT, "cannot process this payload")
    elif text == "big-error":
        raise Failure("big-error", grpc.StatusCode.INTERNAL, "big error " + "x" * (4096 - 10))
    elif text == "endless":
        return "endless", None, None
    elif job_type == "greet":
        return "success", 0, f"Hello, {text or 'world'}!"
    return "success", 0, None


def make_servicer(worker_pb2, worker_pb2_grpc, token):
    in_flight = InFlight()

    class Worker(worker_pb2_grpc.WorkerServicer):
        def Handle(self, request, context):
            count = in_flight.enter()
            # Set when the call ends for any reason: answered, cancelled by the client, or past
            # its deadline. Waiting on it instead of sleeping stops the work once nobody waits.
            ended = threading.Event()
            context.add_callback(ended.set)
            try:
                metadata = dict(context.invocation_metadata())
                text = request.payload.decode("utf-8", errors="replace").strip()
                line = describe(request, metadata, count)
                try:
                    if token and not hmac.compare_digest(
                        metadata.get("authorization", "").encode(), f"Bearer {token}".encode()
                    ):
                        raise Failure("unauthorized", grpc.StatusCode.UNAUTHENTICATED,
                                      "missing or wrong bearer token")
                    outcome, sleep, greeting = decide(text, request.attempt, request.type)
                except Failure as failure:
                    emit(dict(line, outcome=failure.outcome, status=failure.code.name))
                    abort(context, failure)  # raises

                if outcome == "endless":
                    emit(dict(line, outcome=outcome, status="DEADLINE_EXCEEDED"))
                    left = context.time_remaining()  # None: the client set no deadline
                    ended.wait(None if left is None else left + 1)
                    return worker_pb2.HandleResponse()  # too late: nobody reads it
                line.update(outcome=outcome, status="OK")
                if greeting:
                    line["greeting"] = greeting
                emit(line)
                if sleep:
                    ended.wait(sleep)
                return worker_pb2.HandleResponse()
            finally:
                # Counted out before gRPC sends the answer: once the consumer has it, this call
                # must no longer count, or its next call would look concurrent.
                in_flight.leave()

    return Worker()


def describe(request, metadata, in_flight):
    """The JSON line logged per call: what came in (the outcome is added when it is chosen)."""
    return {
        "job_id": request.job_id,
        "type": request.type,
        "queue": request.queue,
        "attempt": request.attempt,
        "max_attempts": request.max_attempts,
        "content_type": request.content_type,
        "deadline": timestamp(request.deadline),
        "submitted_at": timestamp(request.submitted_at),
        "traceparent": metadata.get("traceparent"),
        "tracestate": metadata.get("tracestate"),
        "metadata": dict(request.metadata),
        "authorization": "authorization" in metadata,  # never the token itself
        "payload_len": len(request.payload),
        "in_flight": in_flight,
    }


def abort(context, failure):
    """Ends the call with the failure's status; with a RetryInfo detail when it has a delay."""
    if failure.retry_after is None:
        context.abort(failure.code, failure.message)
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=failure.retry_after)))
    status = status_pb2.Status(
        code=getattr(code_pb2, failure.code.name), message=failure.message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))


def main():
    parser = argparse.ArgumentParser(description="An example jobpipe gRPC worker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0: a free port")
    parser.add_argument("--token-file", help="require `authorization: Bearer <its content>`")
    parser.add_argument("--proto-root", default=str(DEFAULT_PROTO_ROOT),
                        help="the directory holding jobpipe/v1/worker.proto")
    parser.add_argument("--tls-cert", help="serve over TLS (grpcs://): PEM certificate chain")
    parser.add_argument("--tls-key", help="serve over TLS: PEM private key")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")

    token = None
    if args.token_file:
        token = pathlib.Path(args.token_file).read_text(encoding="utf-8").strip()
        if not token:
            parser.error(f"{args.token_file} is empty")

    worker_pb2, worker_pb2_grpc = load_stubs(args.proto_root)
    # Enough threads that the consumer's concurrency limit, not this pool, bounds the calls.
    # No SO_REUSEPORT: a second worker on a port in use fails instead of sharing it.
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=64),
                         options=[("grpc.so_reuseport", 0)])
    worker_pb2_grpc.add_WorkerServicer_to_server(
        make_servicer(worker_pb2, worker_pb2_grpc, token), server)
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        if args.tls_cert:
            read = lambda path: pathlib.Path(path).read_bytes()  # noqa: E731
            credentials = grpc.ssl_server_credentials([(read(args.tls_key), read(args.tls_cert))])
            port = server.add_secure_port(f"{host}:{args.port}", credentials)
        else:
            port = server.add_insecure_port(f"{host}:{args.port}")
    except RuntimeError:
        port = 0
    if port == 0:
        sys.exit(f"cannot listen on {host}:{args.port}")

    # SIGTERM and Ctrl-C: stop taking calls, cancel those in flight (their waits end), exit 0.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    server.start()
    emit({"listening": port})
    stop.wait()
    server.stop(grace=1).wait()


if __name__ == "__main__":
    main()
