#!/usr/bin/env python3
"""Soak client for PhantomLink: many WebSocket clients in one asyncio process, no dependencies.

Each client connects to ws://HOST:PORT/stream/{prefix}-{k % sessions}, completes the handshake
by hand, reads frames until the deadline, answers pings, and checks that sequence numbers
rise by exactly one (a gap is a packet dropped for that client). At the end it closes
cleanly (1000) and prints one JSON line with its totals. tools/soak.sh runs several of these.

    python3 tools/soak_client.py --port 8000 --clients 250 --sessions 10 --seconds 600
"""
import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time

SEQ_KEY = b'"sequence_number":'


def masked_frame(opcode, payload=b""):
    """A client frame (clients must mask)."""
    mask = os.urandom(4)
    header = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        header += bytes([0x80 | n])
    elif n < 65536:
        header += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        header += bytes([0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


class Totals:
    def __init__(self):
        self.connected = 0
        self.failed = 0
        self.packets = 0
        self.gaps = 0          # packets missing between consecutive sequence numbers
        self.gap_events = 0
        self.backwards = 0
        self.closed_by_server = {}
        self.errors = {}
        self.bytes = 0


async def client(host, port, code, deadline, totals, start_delay):
    await asyncio.sleep(start_delay)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError) as e:
        totals.failed += 1
        totals.errors[type(e).__name__] = totals.errors.get(type(e).__name__, 0) + 1
        return
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /stream/{code} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    last = None
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 101"):
            totals.failed += 1
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            totals.errors[status] = totals.errors.get(status, 0) + 1
            writer.close()
            return
        totals.connected += 1
        async with asyncio.timeout_at(deadline):
            while True:
                h = await reader.readexactly(2)
                opcode, n = h[0] & 0x0F, h[1] & 0x7F
                if n == 126:
                    n = struct.unpack(">H", await reader.readexactly(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", await reader.readexactly(8))[0]
                payload = await reader.readexactly(n)
                totals.bytes += n + 2
                if opcode == 1:
                    i = payload.find(SEQ_KEY)
                    if i < 0:
                        continue  # the metadata message
                    j = i + len(SEQ_KEY)
                    k = payload.index(b",", j)
                    seq = int(payload[j:k])
                    totals.packets += 1
                    if last is not None:
                        if seq > last + 1:
                            totals.gaps += seq - last - 1
                            totals.gap_events += 1
                        elif seq <= last:
                            totals.backwards += 1
                    last = seq
                elif opcode == 9:
                    writer.write(masked_frame(0xA, payload))
                elif opcode == 8:
                    code_ = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                    totals.closed_by_server[str(code_)] = totals.closed_by_server.get(str(code_), 0) + 1
                    return
    except TimeoutError:
        pass  # the deadline: a normal end
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        totals.errors[type(e).__name__] = totals.errors.get(type(e).__name__, 0) + 1
        return
    try:
        writer.write(masked_frame(0x8, struct.pack(">H", 1000) + b"soak done"))
        await asyncio.wait_for(writer.drain(), 2)
        writer.close()
    except (OSError, asyncio.TimeoutError):
        pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--prefix", default="soak")
    ap.add_argument("--offset", type=int, default=0, help="index of this process's first client")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--ramp", type=float, default=10, help="seconds over which clients connect")
    args = ap.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        sys.exit("soak_client only targets a server on this machine (127.0.0.0/8)")
    totals = Totals()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds
    started = time.time()
    tasks = []
    for k in range(args.offset, args.offset + args.clients):
        code = f"{args.prefix}-{k % args.sessions}"
        delay = args.ramp * (k - args.offset) / max(args.clients, 1)
        tasks.append(asyncio.create_task(client(args.host, args.port, code, deadline, totals, delay)))
    await asyncio.gather(*tasks)
    out = dict(vars(totals))
    out["clients"] = args.clients
    out["seconds"] = round(time.time() - started, 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
