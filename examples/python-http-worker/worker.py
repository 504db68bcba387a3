#!/usr/bin/env python3
"""An HTTP worker for jobpipe, in Python's standard library only.

A jobpipe consumer whose route points here (`target = "http://127.0.0.1:8080/"`) POSTs each
attempt of each job: the body is the payload byte for byte, `Content-Type` is the job's content
type, and `Jobpipe-*` headers carry the rest (id, type, queue, attempt, deadline, metadata...).
The status code is the answer:

    2xx                     success: the job is acknowledged
    429 / 503 + Retry-After retry after that many seconds
    408, 429, 5xx           transient: retried with backoff while attempts remain
    other 4xx, 3xx          permanent: dead-lettered at once
The first bytes of a failing answer's body become the error text in the job's history.

Delivery is at-least-once: the same Jobpipe-Job-Id can arrive more than once. Make the work
idempotent on it.

    worker.py [--host 127.0.0.1] [--port 8080] [--token-file FILE] [--tls-cert FILE --tls-key FILE]

  --port 0        a free port; the first line printed says which: {"listening": PORT}
  --token-file    require `Authorization: Bearer <the file's content>`, else 401
  --tls-cert, --tls-key   serve HTTPS with this PEM certificate chain and key (route the
                  consumer to https://..., with routes.tls.ca_file if a private CA signed it)

Then it prints one JSON line per job request (see `describe`). GET and HEAD answer 200 "ok"
(for health checks) and print nothing.

Try it (the payload picks the answer; `Jobpipe-Attempt` says which attempt this is):

    Ada               204 (for job type "greet", logs a greeting)
    fail:2            503 while attempt <= 2 (the body says which attempt), then 204
    permanent         422 "cannot process this payload"
    retry-after:5     on attempt 1: 429 with Retry-After: 5; later attempts 204
    sleep:1500        204 after 1.5 s (stops early if the client hangs up)
    big-error         500 with a 5 MiB body
    endless           500 with a chunked body, a chunk every 10 ms, until the client goes away
    redirect          307 to /elsewhere

    curl -i localhost:8080 -H 'Jobpipe-Job-Type: greet' -d Ada
    curl -i localhost:8080 -H 'Jobpipe-Attempt: 1' -d retry-after:5
"""

import argparse
import hmac
import http.server
import json
import select
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.parse

# Connection errors mean the client (the consumer) went away, e.g. when an attempt timed out.
# That is normal: the worker stops what it was doing and says nothing.
# A client that went away, or (with --tls-cert) one whose TLS handshake failed: not our error.
GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, ssl.SSLError)

PRINT_LOCK = threading.Lock()


def emit(line):
    """Prints one JSON line, whole, whatever the other threads print."""
    with PRINT_LOCK:
        print(json.dumps(line), flush=True)


class InFlight:
    """How many requests are being handled at once (tests check a concurrency limit with it)."""

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


IN_FLIGHT = InFlight()


class Answer:
    """What the worker answers: a status, headers, a body, and a word for the log."""

    def __init__(self, outcome, status, body=b"", headers=(), sleep_ms=0, greeting=None):
        self.outcome, self.status, self.body, self.headers = outcome, status, body, list(headers)
        self.sleep_ms, self.greeting = sleep_ms, greeting


def number(text):
    """A whole number, or None."""
    return int(text) if text and text.isascii() and text.isdigit() else None


def decide(payload, attempt, job_type):
    """Picks the answer from the payload: the behaviours listed at the top of this file."""
    text = payload.decode("utf-8", errors="replace").strip()
    word, _, n = text.partition(":")
    n = number(n)
    if word == "fail" and n is not None:
        if attempt <= n:
            body = f"failing on purpose: attempt {attempt} of {text}\n".encode()
            return Answer("transient", 503, body)
    elif word == "retry-after" and n is not None:
        if attempt == 1:
            body = f"busy: retry after {n} s\n".encode()
            return Answer("retry-after", 429, body, [("Retry-After", str(n))])
    elif word == "sleep" and n is not None:
        return Answer("success", 204, sleep_ms=n)
    elif text == "permanent":
        return Answer("permanent", 422, b"cannot process this payload\n")
    elif text == "big-error":
        return Answer("big-error", 500, b"big error " + b"x" * (5 * 1024 * 1024 - 10))
    elif text == "endless":
        return Answer("endless", 500, headers=[("Transfer-Encoding", "chunked")])
    elif text == "redirect":
        return Answer("redirect", 307, b"moved\n", [("Location", "/elsewhere")])
    elif job_type == "greet":
        return Answer("success", 204, greeting=f"Hello, {text or 'world'}!")
    return Answer("success", 204)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the consumer reuses its connections
    token = None  # the bearer token required, when --token-file is given

    def do_POST(self):
        in_flight = IN_FLIGHT.enter()
        try:
            payload = self.read_body()
            header = self.headers.get
            attempt = number(header("Jobpipe-Attempt")) or 1
            if self.token and not hmac.compare_digest(
                (header("Authorization") or "").encode(), f"Bearer {self.token}".encode()
            ):
                answer = Answer("unauthorized", 401, b"missing or wrong bearer token\n",
                                [("WWW-Authenticate", "Bearer")])
            else:
                answer = decide(payload, attempt, header("Jobpipe-Job-Type"))
            emit(self.describe(payload, attempt, in_flight, answer))

            if answer.outcome == "endless":
                self.send_endless(answer)
                return
            if answer.sleep_ms and not self.sleep(answer.sleep_ms / 1000):
                self.close_connection = True  # the client hung up while we slept
                return
        finally:
            # Counted out before the answer is sent: once the consumer has the answer, this
            # request must no longer count, or its next request would look concurrent.
            IN_FLIGHT.leave()
        self.send(answer)

    def describe(self, payload, attempt, in_flight, answer):
        """The JSON line logged per request: what came in and what the worker answers."""
        header = self.headers.get
        metadata = {
            name[len("Jobpipe-Meta-"):]: urllib.parse.unquote(value)
            for name, value in self.headers.items()
            if name.lower().startswith("jobpipe-meta-")
        }
        line = {
            "job_id": header("Jobpipe-Job-Id"),
            "type": header("Jobpipe-Job-Type"),
            "queue": header("Jobpipe-Queue"),
            "attempt": attempt,
            "max_attempts": number(header("Jobpipe-Max-Attempts")),
            "content_type": header("Content-Type"),
            "deadline": header("Jobpipe-Deadline"),
            "submitted_at": header("Jobpipe-Submitted-At"),
            "traceparent": header("traceparent"),
            "tracestate": header("tracestate"),
            "metadata": metadata,
            "authorization": header("Authorization") is not None,  # never the token itself
            "ce_specversion": header("ce-specversion"),
            "ce_id": header("ce-id"),
            "ce_type": header("ce-type"),
            "ce_source": header("ce-source"),
            "path": self.path,
            "payload_len": len(payload),
            "in_flight": in_flight,
            "outcome": answer.outcome,
            "status": answer.status,
        }
        if answer.greeting:
            line["greeting"] = answer.greeting
        return line

    def read_body(self):
        """The request body, sized by Content-Length or sent chunked."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            body = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()  # the CRLF after the chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(body)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def sleep(self, seconds):
        """Sleeps, but stops early when the client hangs up. False when it did."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], left)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                return False  # end of stream: the client closed the connection
            if readable:
                time.sleep(min(left, 0.01))  # a pipelined request: just wait it out
        return True

    def send(self, answer):
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.status != 204:  # a 204 has no body and must not say Content-Length
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(answer.body)

    def send_endless(self, answer):
        """A 500 whose chunked body never ends: a chunk every 10 ms until the client leaves."""
        self.close_connection = True
        self.send_response(answer.status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        for name, value in answer.headers:
            self.send_header(name, value)
        self.end_headers()
        chunk = b"still failing...\n"
        while True:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # raises once it is gone
            time.sleep(0.01)

    def do_GET(self):
        self.send(Answer("health", 200, b"ok\n"))

    do_HEAD = do_GET

    def handle(self):
        try:
            super().handle()
        except GONE:
            self.close_connection = True

    def log_request(self, code="-", size="-"):
        pass  # stdout is the JSON lines; no access log


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True  # a stuck request never holds up exiting

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], GONE):
            super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description="An example jobpipe HTTP worker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: a free port")
    parser.add_argument("--token-file", help="require `Authorization: Bearer <its content>`")
    parser.add_argument("--tls-cert", help="serve HTTPS: PEM certificate chain")
    parser.add_argument("--tls-key", help="serve HTTPS: PEM private key")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")

    if args.token_file:
        with open(args.token_file, encoding="utf-8") as file:
            Handler.token = file.read().strip()
        if not Handler.token:
            parser.error(f"{args.token_file} is empty")
    if ":" in args.host:
        Server.address_family = socket.AF_INET6

    # SIGTERM and Ctrl-C: leave serve_forever, close the socket, exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))

    try:
        server = Server((args.host, args.port), Handler)
    except OSError as error:
        sys.exit(f"cannot listen on {args.host}:{args.port}: {error.strerror}")
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # The handshake runs in the request's thread, so a slow client holds up no other.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False)
    with server:
        emit({"listening": server.server_address[1]})
        server.serve_forever()


if __name__ == "__main__":
    main()
