#!/usr/bin/env python3
"""A paced UDP stream for the roaming tests: each datagram carries a sequence number and the
send time; the receiver reports what arrived, what was lost and the longest gap between two
arrivals (how long traffic stopped).

  udp_stream.py send DST PORT PPS SECONDS     prints {"sent": N, "start_unix_ns": T} (packet i
                                              is due at T + i / PPS)
  udp_stream.py recv PORT SECONDS             prints {"received", "max_seq", "longest_gap_ms",
                                              "duplicates", "socket_drops", "missing"} (JSON,
                                              one line; "missing": the sequence numbers below
                                              max_seq that never came, at most 100,000;
                                              "socket_drops": what the receiving socket's
                                              buffer overflowed, SO_RXQ_OVFL)

The receiver's socket buffer is UDP_STREAM_RCVBUF bytes (default 4 MiB, SO_RCVBUFFORCE as root;
0: the kernel's default). With UDP_STREAM_IDLE_EXIT=S a receiver stops early once it has received
something and then nothing for S seconds (what did not come by then counts as missing).: with the default ~200 KiB a Python reader that is descheduled for
~25 ms at 10,000 packets/s overflows it, which is the reader's loss, not the tunnel's.
  udp_stream.py serve PORT PPS SECONDS        waits for a hello on PORT, then streams to where
                                              it came from (the way back through a masquerade);
                                              prints {"sent": N, "start_unix_ns": T} (packet i
                                              is due at T + i / PPS)
  udp_stream.py fetch DST PORT SECONDS        says hello to DST:PORT every 200 ms (keeping the
                                              masquerade's session) and reports like recv
"""
import json
import os
import socket
import struct
import sys
import time

# Linux socket options Python does not name.
SO_RCVBUFFORCE = 33
SO_RXQ_OVFL = 40


def send(dst, port, pps, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    n = int(pps * secs)
    start_unix_ns = time.time_ns()
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
    print(json.dumps({"sent": sent, "start_unix_ns": start_unix_ns}))


def serve(port, pps, secs):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    _, peer = s.recvfrom(2048)
    s.setblocking(False)
    n = int(pps * secs)
    start_unix_ns = time.time_ns()
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
    print(json.dumps({"sent": sent, "start_unix_ns": start_unix_ns}))


def recv(port, secs, hello=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    want = int(os.environ.get("UDP_STREAM_RCVBUF", str(4 << 20)))
    if want > 0:
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, want)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.05)
    seen = set()
    duplicates = 0
    socket_drops = 0
    arrivals = []
    end = time.monotonic() + secs
    idle_exit = float(os.environ.get("UDP_STREAM_IDLE_EXIT", "0"))
    next_hello = 0.0
    while time.monotonic() < end:
        if idle_exit > 0 and arrivals and time.monotonic() - arrivals[-1] > idle_exit:
            break
        if hello is not None and time.monotonic() >= next_hello:
            next_hello = time.monotonic() + 0.2
            try:
                s.sendto(b"hello", hello)
            except OSError:
                pass
        try:
            data, anc, _, _ = s.recvmsg(2048, socket.CMSG_SPACE(4))
        except socket.timeout:
            continue
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(value) >= 4:
                socket_drops = struct.unpack("=I", value[:4])[0]
        if len(data) >= 16:
            seq, _ = struct.unpack("!QQ", data[:16])
            if seq not in seen:
                seen.add(seq)
                arrivals.append(time.monotonic())
            else:
                duplicates += 1
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    top = max(seen) if seen else -1
    missing = [i for i in range(top) if i not in seen][:100000]
    print(json.dumps({
        "received": len(seen),
        "max_seq": top,
        "longest_gap_ms": round(max(gaps) * 1000, 1) if gaps else None,
        "duplicates": duplicates,
        "socket_drops": socket_drops,
        "missing": missing,
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
