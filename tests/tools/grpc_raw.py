#!/usr/bin/env python3
"""Talks HTTP/2 to a gRPC server byte by byte with the `h2` package, to send what no gRPC
library would: wrong methods and content types, malformed messages, two messages in a unary
call, and uploads that stall. jobpipe's hostile-input tests run it.

    grpc_raw.py HOST:PORT request PATH METHOD CONTENT_TYPE BODY_HEX
        One request; prints {"http": status, "grpc_status": ..., "grpc_message": ...}.
    grpc_raw.py HOST:PORT stall PATH STREAMS DECLARED SENT
        STREAMS calls on one connection, each declaring a DECLARED-byte message and sending SENT
        bytes of it, then nothing. Prints {"stalled": STREAMS} once all are sent, then one line
        per call as it ends: {"stream": id, "grpc_status": ..., "after_s": ...}; exits when all
        have ended (or 120 s passed).
"""

import json
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events


def connect(target: str):
    host, port = target.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def headers(target: str, path: str, method: str, content_type: str):
    pairs = [(":method", method), (":scheme", "http"), (":authority", target), (":path", path)]
    if content_type:
        pairs.append(("content-type", content_type))
    pairs.append(("te", "trailers"))
    return pairs


class Call:
    def __init__(self):
        self.http = None
        self.grpc_status = None
        self.grpc_message = ""
        self.ended = False

    def take(self, pairs):
        for name, value in pairs:
            name, value = name.decode(), value.decode(errors="replace")
            if name == ":status":
                self.http = int(value)
            elif name == "grpc-status":
                self.grpc_status = int(value)
            elif name == "grpc-message":
                self.grpc_message = value


def pump(sock, conn, calls: dict, until) -> None:
    """Reads events into `calls` until `until()` holds or the connection closes."""
    while not until():
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return
        if not data:
            for call in calls.values():
                call.ended = True
            return
        for event in conn.receive_data(data):
            if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                calls[event.stream_id].take(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                calls[event.stream_id].ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                for call in calls.values():
                    call.ended = True
        sock.sendall(conn.data_to_send())


def request(target, path, method, content_type, body_hex) -> int:
    sock, conn = connect(target)
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, headers(target, path, method, content_type))
    conn.send_data(stream, bytes.fromhex(body_hex), end_stream=True)
    sock.sendall(conn.data_to_send())
    calls = {stream: Call()}
    pump(sock, conn, calls, lambda: calls[stream].ended)
    call = calls[stream]
    print(json.dumps({"http": call.http, "grpc_status": call.grpc_status, "grpc_message": call.grpc_message}))
    return 0


def stall(target, path, streams, declared, sent) -> int:
    sock, conn = connect(target)
    calls = {}
    # The server's settings and window updates first: they say how much may be sent.
    sock.settimeout(0.5)
    pump(sock, conn, calls, lambda: False)
    for _ in range(streams):
        stream = conn.get_next_available_stream_id()
        conn.send_headers(stream, headers(target, path, "POST", "application/grpc"))
        calls[stream] = Call()
        room = min(sent, conn.local_flow_control_window(stream))
        data = b"\x00" + struct.pack(">I", declared) + b"\x0a" * (room - 5)
        for start in range(0, len(data), conn.max_outbound_frame_size):
            conn.send_data(stream, data[start : start + conn.max_outbound_frame_size])
    sock.sendall(conn.data_to_send())
    print(json.dumps({"stalled": streams}), flush=True)
    started = time.monotonic()
    reported = set()
    sock.settimeout(1)
    while len(reported) < streams and time.monotonic() - started < 120:
        pump(sock, conn, calls, lambda: any(c.ended and s not in reported for s, c in calls.items()))
        for stream, call in calls.items():
            if call.ended and stream not in reported:
                reported.add(stream)
                after = round(time.monotonic() - started, 2)
                print(json.dumps({"stream": stream, "grpc_status": call.grpc_status, "after_s": after}), flush=True)
    return 0


def main() -> int:
    target, command = sys.argv[1], sys.argv[2]
    if command == "request":
        return request(target, *sys.argv[3:7])
    if command == "stall":
        path, streams, declared, sent = sys.argv[3], *map(int, sys.argv[4:7])
        return stall(target, path, streams, declared, sent)
    raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    sys.exit(main())
