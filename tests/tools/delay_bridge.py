#!/usr/bin/env python3
"""A two-port Ethernet bridge that delays every frame by a fixed time, each way.

    delay_bridge.py IF_A IF_B DELAY_MS

Run inside a network namespace that holds both interfaces (up, promiscuous): every frame
received on one is sent unchanged out of the other DELAY_MS later, in arrival order. It
stands in for `tc qdisc ... netem delay` on kernels without sch_netem (this lab's VM
kernel has none): tests/vcm.rs puts it on the gateway path of the connectivity manager's
lab so that the direct path's shorter round trip shows. Frames the bridge itself sent
(PACKET_OUTGOING) are not taken again. Prints "ready" once both sockets are bound, and on
SIGINT/SIGTERM one line with the frames forwarded each way.
"""

import heapq
import select
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: delay_bridge.py IF_A IF_B DELAY_MS")
    names = sys.argv[1:3]
    delay = float(sys.argv[3]) / 1000.0
    socks = []
    for n in names:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((n, 0))
        s.setblocking(False)
        socks.append(s)
    other = {socks[0].fileno(): socks[1], socks[1].fileno(): socks[0]}
    counts = {names[0]: 0, names[1]: 0}
    due = []  # (time, order, out socket, frame, from name)
    order = 0
    stop = False

    def on_signal(_sig, _frm):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, out, frame, src = heapq.heappop(due)
            try:
                out.send(frame)
                counts[src] += 1
            except OSError:
                pass  # a full queue on the veth: the frame is lost, as on a wire
        timeout = max(0.0, due[0][0] - now) if due else 0.2
        try:
            ready, _, _ = select.select(socks, [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for s in ready:
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue
                order += 1
                heapq.heappush(due, (now + delay, order, other[s.fileno()], frame, addr[0]))
    print(f"forwarded {names[0]}={counts[names[0]]} {names[1]}={counts[names[1]]}", flush=True)


if __name__ == "__main__":
    main()
