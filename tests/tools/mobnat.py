#!/usr/bin/env python3
"""TCP helpers for the mobile-NAT namespace test (tests/mobile_nat.rs): an echo server, an idle
connection that talks once before and once after the client's moves, and connect probes.

  mobnat.py listen PORT                 TCP line echo on 0.0.0.0:PORT (every address the host
                                        holds) until killed; one thread per connection
  mobnat.py idle DST PORT TRIGGER SECS  connects, exchanges one line, stays silent until the
                                        file TRIGGER exists (at most SECS), exchanges a second
                                        line on the same connection; prints {"first": bool,
                                        "second": bool, "error": str|null} (JSON, one line)
  mobnat.py probe TIMEOUT DST:PORT...   one TCP connect (and a line echoed) per destination, all
                                        at once, each within TIMEOUT seconds; prints
                                        {"DST:PORT": bool, ...} (True: connected and echoed)
  mobnat.py burst DST PORT N            N UDP datagrams from N sockets (N new connections for a
                                        masquerade); prints {"sent": N}
"""
import json
import os
import socket
import sys
import threading
import time


def echo(conn):
    with conn:
        f = conn.makefile("rwb", buffering=0)
        for line in f:
            f.write(line)


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


def exchange(s, f, text):
    s.sendall(text.encode() + b"\n")
    return f.readline().decode().strip() == text


def idle(dst, port, trigger, secs):
    out = {"first": False, "second": False, "error": None}
    try:
        s = socket.create_connection((dst, port), timeout=10)
        f = s.makefile("rb")
        out["first"] = exchange(s, f, "before the moves")
        end = time.monotonic() + secs
        while not os.path.exists(trigger) and time.monotonic() < end:
            time.sleep(0.05)
        out["second"] = exchange(s, f, "after the moves")
        s.close()
    except OSError as e:
        out["error"] = str(e)
    print(json.dumps(out))


def probe(timeout, targets):
    res = {}

    def one(t):
        host, port = t.rsplit(":", 1)
        try:
            s = socket.create_connection((host, int(port)), timeout=timeout)
            s.settimeout(timeout)
            f = s.makefile("rb")
            res[t] = exchange(s, f, "probe")
            s.close()
        except OSError:
            res[t] = False

    threads = [threading.Thread(target=one, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(res))


def burst(dst, port, n):
    socks = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"burst %d" % i, (dst, port))
        socks.append(s)
    time.sleep(0.2)
    print(json.dumps({"sent": n}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "listen":
        listen(int(sys.argv[2]))
    elif cmd == "idle":
        idle(sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))
    elif cmd == "probe":
        probe(float(sys.argv[2]), sys.argv[3:])
    elif cmd == "burst":
        burst(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: mobnat.py listen|idle|probe|burst ...")
