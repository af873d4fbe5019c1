#!/usr/bin/env python3
"""A userspace delay relay, and a UDP echo server to measure through it.

The kernel here has no netem, so the harness adds latency with this relay,
run in a middle network namespace whose ip_forward is 0: packets can only
cross it through this process. Each mapping listens on one address and
forwards to another, holding every packet (UDP) or chunk (TCP) for the
one-way delay in each direction, in order.

    relay.py relay --udp LISTEN=TARGET ... --tcp LISTEN=TARGET ...
    relay.py echo ADDR

Control on stdin, one command a line, answered on stdout:
    delay MS    set the one-way delay (both directions), for new packets
    stats       packets/chunks forwarded, as JSON
End of stdin ends the process, so a harness that dies takes its relay
with it.
"""

import asyncio
import collections
import json
import socket
import sys


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


class DelayLine:
    """Calls queued functions `delay` seconds after they were queued, in
    the order they were queued (a constant delay keeps FIFO order; a timer
    per packet would not, as asyncio's timer heap is not stable)."""

    def __init__(self, loop):
        self.loop = loop
        self.delay = 0.0
        self.queue = collections.deque()
        self.timer = None

    def push(self, fn, *args):
        if self.delay <= 0 and not self.queue:
            fn(*args)
            return
        self.queue.append((self.loop.time() + self.delay, fn, args))
        if self.timer is None:
            self.timer = self.loop.call_at(self.queue[0][0], self._fire)

    def _fire(self):
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, fn, args = self.queue.popleft()
            try:
                fn(*args)
            except OSError:
                pass  # a peer that went away; UDP is lossy anyway
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self._fire)


class Stats:
    def __init__(self):
        self.counts = collections.Counter()

    def add(self, key):
        self.counts[key] += 1


class UdpFront(asyncio.DatagramProtocol):
    """The listening side of a UDP mapping: one upstream socket per client
    address, so the target sees one flow per client."""

    def __init__(self, loop, line, target, stats, name):
        self.loop, self.line, self.target = loop, line, target
        self.stats, self.name = stats, name
        self.transport = None
        self.backs = {}

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, client):
        back = self.backs.get(client)
        if back is None:
            back = UdpBack(self, client)
            self.backs[client] = back
            self.loop.create_task(self._open(back))
        self.stats.add(self.name + " up")
        self.line.push(back.send, data)

    async def _open(self, back):
        await self.loop.create_datagram_endpoint(lambda: back, remote_addr=self.target)


class UdpBack(asyncio.DatagramProtocol):
    def __init__(self, front, client):
        self.front, self.client = front, client
        self.transport = None
        self.pending = []

    def connection_made(self, transport):
        self.transport = transport
        for data in self.pending:
            transport.sendto(data)
        self.pending = []

    def send(self, data):
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.sendto(data)

    def datagram_received(self, data, _addr):
        self.front.stats.add(self.front.name + " down")
        self.front.line.push(self.front.transport.sendto, data, self.client)

    def error_received(self, exc):
        pass  # ICMP errors: QUIC copes with loss


async def tcp_pipe(reader, writer, line, stats, name):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                line.push(_eof, writer)
                return
            stats.add(name)
            line.push(writer.write, data)
    except (ConnectionError, OSError):
        line.push(writer.close)


def _eof(writer):
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def tcp_mapping(listen, target, line, stats):
    name = "tcp %s:%d" % listen

    async def client(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        for s in (writer, up_writer):
            sock = s.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            tcp_pipe(reader, up_writer, line, stats, name + " up"),
            tcp_pipe(up_reader, writer, line, stats, name + " down"),
        )
        writer.close()
        up_writer.close()

    return await asyncio.start_server(client, *listen)


async def control(line, stats):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while True:
        raw = await reader.readline()
        if not raw:
            return  # the harness is gone
        words = raw.decode().split()
        if words[:1] == ["delay"] and len(words) == 2 and line is not None:
            line.delay = float(words[1]) / 1000.0
            print("ok delay", words[1], flush=True)
        elif words == ["stats"]:
            print(json.dumps(dict(stats.counts)), flush=True)
        else:
            print("error: unknown command", raw.decode().strip(), flush=True)


async def relay(udp, tcp):
    loop = asyncio.get_running_loop()
    line, stats = DelayLine(loop), Stats()
    for listen, target in udp:
        name = "udp %s:%d" % listen
        await loop.create_datagram_endpoint(
            lambda t=target, n=name: UdpFront(loop, line, t, stats, n), local_addr=listen
        )
    servers = [await tcp_mapping(listen, target, line, stats) for listen, target in tcp]
    await control(line, stats)
    for s in servers:
        s.close()


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


async def echo(addr):
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(Echo, local_addr=addr)
    await control(None, Stats())


def main(argv):
    if argv[:1] == ["echo"] and len(argv) == 2:
        asyncio.run(echo(parse_addr(argv[1])))
        return 0
    if argv[:1] != ["relay"]:
        print(__doc__, file=sys.stderr)
        return 2
    udp, tcp, args = [], [], argv[1:]
    while args:
        kind, spec, args = args[0], args[1], args[2:]
        listen, target = spec.split("=")
        pair = (parse_addr(listen), parse_addr(target))
        {"--udp": udp, "--tcp": tcp}[kind].append(pair)
    asyncio.run(relay(udp, tcp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
