#!/usr/bin/env python3
"""Publishes one hostile message with raw AMQP 0-9-1 frames: what any client could send and a
well-behaved library would refuse to build. The standard library only; jobpipe's tests run it.

    amqp_raw.py HOST PORT USER PASSWORD VHOST EXCHANGE ROUTING_KEY CASE [N]

Cases (N is a depth or a size):
    nested-table N   headers nested N tables deep
    nested-array N   headers nested N arrays deep
    large-headers N  one header holding an N-byte string
    utf8-message-id  invalid UTF-8 in message_id
    utf8-content-type invalid UTF-8 in content_type
    utf8-header-name invalid UTF-8 in a header name
    not-a-job        a well-formed message without jobpipe's headers

Prints "ack" or "nack" (the broker's publisher confirm) and exits 0, or exits 1 with the reason.
"""

import socket
import struct
import sys

FRAME_END = b"\xce"


def shortstr(raw: bytes) -> bytes:
    return struct.pack(">B", len(raw)) + raw


def longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def table(entries: list) -> bytes:
    """entries: (raw key, type byte, encoded value)"""
    body = b"".join(shortstr(key) + kind + value for key, kind, value in entries)
    return longstr(body)


def nested_table(depth: int) -> bytes:
    value = table([(b"leaf", b"t", b"\x01")])
    for _ in range(depth - 1):
        value = table([(b"a", b"F", value)])
    return value


def nested_array(depth: int) -> bytes:
    value = longstr(b"t\x01")
    for _ in range(depth - 1):
        value = longstr(b"A" + value)
    return value


class Connection:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buffer = b""

    def send(self, kind: int, channel: int, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END)

    def method(self, channel: int, class_id: int, method_id: int, args: bytes) -> None:
        self.send(1, channel, struct.pack(">HH", class_id, method_id) + args)

    def read(self) -> tuple:
        while True:
            if len(self.buffer) >= 7:
                kind, channel, size = struct.unpack(">BHI", self.buffer[:7])
                if len(self.buffer) >= 8 + size:
                    payload = self.buffer[7 : 7 + size]
                    self.buffer = self.buffer[8 + size :]
                    return kind, channel, payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("the broker closed the connection")
            self.buffer += chunk

    def expect(self, class_id: int, method_id: int) -> bytes:
        while True:
            kind, _, payload = self.read()
            if kind != 1:
                continue
            got = struct.unpack(">HH", payload[:4])
            if got == (class_id, method_id):
                return payload[4:]
            if got in ((10, 50), (20, 40)):
                code = struct.unpack(">H", payload[4:6])[0]
                text = payload[7 : 7 + payload[6]].decode(errors="replace")
                raise RuntimeError(f"closed by the broker: {code} {text}")


def properties(case: str, n: int) -> bytes:
    """Property flags and list: content_type (bit 15), headers (13), delivery_mode (12),
    message_id (7), type (5)."""
    content_type = b"application/octet-stream"
    message_id = b"poison-" + case.encode()
    headers = [(b"x-jobpipe-attempt", b"l", struct.pack(">q", 1))]
    if case == "nested-table":
        headers.append((b"deep", b"F", nested_table(n)))
    elif case == "nested-array":
        headers.append((b"deep", b"A", nested_array(n)))
    elif case == "large-headers":
        headers.append((b"big", b"S", longstr(b"v" * n)))
    elif case == "utf8-message-id":
        message_id = b"poison-\xff\xfe"
    elif case == "utf8-content-type":
        content_type = b"text/\xc3\x28"
    elif case == "utf8-header-name":
        headers.append((b"bad-\xed\xa0\x80", b"S", longstr(b"v")))
    elif case != "not-a-job":
        raise SystemExit(f"unknown case {case!r}")
    flags = (1 << 15) | (1 << 13) | (1 << 12) | (1 << 7) | (1 << 5)
    return (
        struct.pack(">H", flags)
        + shortstr(content_type)
        + table(headers)
        + b"\x02"
        + shortstr(message_id)
        + shortstr(b"noop")
    )


def main() -> int:
    host, port, user, password, vhost, exchange, routing_key, case = sys.argv[1:9]
    n = int(sys.argv[9]) if len(sys.argv) > 9 else 0
    conn = Connection(host, int(port))
    conn.sock.sendall(b"AMQP\x00\x00\x09\x01")
    conn.expect(10, 10)
    response = b"\x00" + user.encode() + b"\x00" + password.encode()
    conn.method(0, 10, 11, table([]) + shortstr(b"PLAIN") + longstr(response) + shortstr(b"en_US"))
    tune = conn.expect(10, 30)
    channel_max, frame_max, _ = struct.unpack(">HIH", tune[:8])
    conn.method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
    conn.method(0, 10, 40, shortstr(vhost.encode()) + shortstr(b"") + b"\x00")
    conn.expect(10, 41)
    conn.method(1, 20, 10, shortstr(b""))
    conn.expect(20, 11)
    conn.method(1, 85, 10, b"\x00")
    conn.expect(85, 11)
    body = b"{}"
    conn.method(1, 60, 40, struct.pack(">H", 0) + shortstr(exchange.encode()) + shortstr(routing_key.encode()) + b"\x00")
    header = struct.pack(">HHQ", 60, 0, len(body)) + properties(case, n)
    if len(header) + 8 > frame_max:
        raise SystemExit(f"a {len(header)}-byte header frame is over the broker's frame_max {frame_max}")
    conn.send(2, 1, header)
    conn.send(3, 1, body)
    while True:
        kind, _, payload = conn.read()
        if kind == 1 and payload[:4] == struct.pack(">HH", 60, 80):
            print("ack")
            break
        if kind == 1 and payload[:4] == struct.pack(">HH", 60, 120):
            print("nack")
            break
        if kind == 1 and payload[:4] in (struct.pack(">HH", 10, 50), struct.pack(">HH", 20, 40)):
            raise SystemExit(f"closed by the broker: {payload[6:7 + payload[6]].decode(errors='replace')}")
    conn.method(0, 10, 50, struct.pack(">H", 200) + shortstr(b"bye") + struct.pack(">HH", 0, 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
