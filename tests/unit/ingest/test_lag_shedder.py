"""edge.LagShedder: the share of new requests ingest lets through, steered by how late
its event loop runs (AIMD), and the accept queue it reports."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time

from prometheus_client import REGISTRY

from hookstream.ingest.edge import LagShedder


def gauge(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None
    return value


async def ticks(shedder: LagShedder, count: int) -> None:
    """Let the shedder's timer run ``count`` times on an idle loop."""
    for _ in range(count):
        await asyncio.sleep(shedder.interval_s)


async def stall(seconds: float) -> None:
    """Hold the event loop (as a CPU-bound process would), then yield to its timers."""
    time.sleep(seconds)  # noqa: ASYNC251 (blocking the loop is the point)
    await asyncio.sleep(0)


async def test_a_loop_that_keeps_running_late_cuts_the_share_and_it_grows_back() -> None:
    shedder = LagShedder(0.1)
    assert gauge("hookstream_ingest_admit_share") == 1.0  # before any connection
    shedder.start(asyncio.get_running_loop())
    try:
        for _ in range(4):  # every tick late by more than the target
            await stall(0.25)
        assert shedder.admit <= 0.75 ** 2, shedder.admit
        assert shedder.behind()  # the publisher then takes a late ack for its own doing
        cut = shedder.admit
        assert gauge("hookstream_ingest_admit_share") == cut
        await ticks(shedder, 6)  # on time again: the share grows back step by step
        assert cut < shedder.admit < 1.0
        await ticks(shedder, int(1 / shedder.increase) + 10)
        assert shedder.admit == 1.0
        assert not shedder.behind()
    finally:
        shedder.stop()


async def test_a_lone_stall_under_four_times_the_target_sheds_nothing() -> None:
    shedder = LagShedder(0.1)
    shedder.start(asyncio.get_running_loop())
    try:
        await ticks(shedder, 2)
        await stall(0.25)  # one late tick (a GC pass, say), then on time
        await ticks(shedder, 3)
        assert shedder.admit == 1.0
        await stall(0.5)  # one tick over four times the target: overload enough
        await ticks(shedder, 1)
        assert shedder.admit < 1.0
    finally:
        shedder.stop()


async def test_the_share_never_falls_below_the_floor() -> None:
    shedder = LagShedder(0.02)
    shedder.start(asyncio.get_running_loop())
    try:
        for _ in range(40):  # 0.75 ** 17 < 0.01
            await stall(0.1)
        assert shedder.admit == shedder.floor, shedder.admit
    finally:
        shedder.stop()


def test_shed_turns_away_the_share_not_let_through() -> None:
    shedder = LagShedder(0.5)
    assert not any(shedder.shed() for _ in range(1000))  # admit 1: nothing shed
    shedder.admit = 0.3
    random.seed(7)
    shed = sum(shedder.shed() for _ in range(20000))
    assert 0.67 < shed / 20000 < 0.73, shed


async def test_the_accept_queue_of_a_listener_is_read_and_reported() -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
    shedder = LagShedder(0.5)
    shedder.listeners = [listener]
    try:
        assert shedder._accept_queue() == 5  # connected, not yet accepted
        accepted, _ = listener.accept()
        accepted.close()
        assert shedder._accept_queue() == 4
        shedder.start(asyncio.get_running_loop())
        await asyncio.sleep(1.2)  # the gauge shows the worst of each second
        assert gauge("hookstream_ingest_accept_queue") == 4
        listener.close()
        assert shedder._accept_queue() == 0  # a closed listener is skipped, not raised
    finally:
        shedder.stop()
        for client in clients:
            client.close()


def test_ingest_listens_on_several_sockets_of_one_port() -> None:
    """HOOKSTREAM_INGEST_LISTENERS sockets share the webhook port (SO_REUSEPORT), so the
    event loop accepts up to one new connection per socket per pass (ADR 8)."""
    from hookstream.ingest.main import listening_sockets
    from hookstream.ingest.settings import IngestSettings
    from tests.support import free_port

    port = free_port()
    sockets = listening_sockets(IngestSettings(host="127.0.0.1", port=port, listeners=4))
    try:
        assert len(sockets) == 4
        assert {s.getsockname() for s in sockets} == {("127.0.0.1", port)}
        for sock in sockets:
            sock.listen(16)
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        shedder = LagShedder(0.5)
        shedder.listeners = sockets
        # Every connection waits in one of the four queues; the kernel spreads them.
        queued = [struct.unpack_from("<24xI", s.getsockopt(socket.IPPROTO_TCP,
                                                           socket.TCP_INFO, 32))[0]
                  for s in sockets]
        assert sum(queued) == 32, queued
        assert 0 < shedder._accept_queue() < 32
        for client in clients:
            client.close()
    finally:
        for sock in sockets:
            sock.close()
    alone = listening_sockets(IngestSettings(host="127.0.0.1", port=port, listeners=1))
    try:  # one socket: no SO_REUSEPORT, so a second process cannot share the port
        assert alone[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    finally:
        alone[0].close()
