#!/usr/bin/env python3
"""A paced UDP stream for the roaming tests: each datagram carries a sequence number and the
send time; the receiver reports what arrived, what was lost and the longest gap between two
arrivals (how long traffic stopped).

  udp_stream.py send DST PORT PPS SECONDS     prints {"sent": N}
  udp_stream.py recv PORT SECONDS             prints {"received", "max_seq", "longest_gap_ms",
                                              "first_ms", "last_ms"} (JSON, one line)
  udp_stream.py serve PORT PPS SECONDS        waits for a hello on PORT, then streams to where
                                              it came from (the way back through a masquerade);
                                              prints {"sent": N}
  udp_stream.py fetch DST PORT SECONDS        says hello to DST:PORT every 200 ms (keeping the
                                              masquerade's session) and reports like recv
"""
import json
import socket
import struct
import sys
import time


def send(dst, port, pps, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = int(pps * secs)
    start = time.monotonic()
    sent = 0
    for i in range(n):
        due = start + i / pps
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        try:
            s.sendto(struct.pack("!QQ", i, time.monotonic_ns()) + b"x" * 84, (dst, port))
            sent += 1
        except OSError:
            # No route for a moment (the sender's own address changing): counted as sent, so
            # it shows as lost.
            sent += 1
    print(json.dumps({"sent": sent}))


def serve(port, pps, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    _, peer = s.recvfrom(2048)
    s.setblocking(False)
    n = int(pps * secs)
    start = time.monotonic()
    sent = 0
    for i in range(n):
        due = start + i / pps
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        try:
            s.sendto(struct.pack("!QQ", i, time.monotonic_ns()) + b"x" * 84, peer)
        except OSError:
            pass
        sent += 1
        try:
            while True:
                s.recvfrom(2048)
        except OSError:
            pass
    print(json.dumps({"sent": sent}))


def recv(port, secs, hello=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.05)
    seen = set()
    arrivals = []
    end = time.monotonic() + secs
    next_hello = 0.0
    while time.monotonic() < end:
        if hello is not None and time.monotonic() >= next_hello:
            next_hello = time.monotonic() + 0.2
            try:
                s.sendto(b"hello", hello)
            except OSError:
                pass
        try:
            data, _ = s.recvfrom(2048)
        except socket.timeout:
            continue
        if len(data) >= 16:
            seq, _ = struct.unpack("!QQ", data[:16])
            if seq not in seen:
                seen.add(seq)
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    print(json.dumps({
        "received": len(seen),
        "max_seq": max(seen) if seen else -1,
        "longest_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
    }))


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    elif sys.argv[1] == "serve":
        serve(int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
    elif sys.argv[1] == "fetch":
        recv(0, float(sys.argv[4]), (sys.argv[2], int(sys.argv[3])))
    else:
        recv(int(sys.argv[2]), float(sys.argv[3]))
