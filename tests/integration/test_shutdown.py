"""Stopping while commits are in flight: the daemon exits, and nothing is stored twice.

A SIGTERM can land while a spool commit runs in its thread. Cancelling the waiting coroutine
must neither hang the shutdown nor forget what that commit stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
from collections import Counter
from pathlib import Path

import cbor2

import gateway
from gateway.config import settings as config
from gateway.device.daemon import Gateway
from gateway.device.spool import Spool
from gateway.wire import cose, identity, payloads
from tests.brokers import Mosquitto

CONFIG = """
[device]
name = "stopper"
key_file = "device.key"
[spool]
path = "spool.db"
commit_interval = "{commit}"
[uplink]
url = "mqtt://127.0.0.1:{port}"
batch_max_readings = 20
batch_max_age = "1 s"
[clock]
mode = "synced"
[[sensor]]
id = "fast"
driver = "simulated"
interval = "0.01 s"
kind = "all"
"""


def _stored(path: Path, ident: identity.Identity) -> Counter[tuple[str, float]]:
    """Every reading in the spool, sealed or pending, counted."""
    s = Spool(
        path,
        identity=ident,
        boot=bytes(16),
        max_size=1 << 30,
        batch_max_readings=20,
        batch_max_age=1,
        seal_ahead=1,
        modules=list,
    )
    s.open()
    try:
        seen: Counter[tuple[str, float]] = Counter()
        for _, message, _ in s.unacked():
            b = payloads.decode_batch(cose.verify1(message).payload)
            seen.update((r[payloads.N], r[payloads.T]) for r in b.records)
        assert s.conn is not None
        for (record,) in s.conn.execute("SELECT record FROM readings"):
            r = cbor2.loads(record)
            seen[(r[payloads.N], r[payloads.T])] += 1
        return seen
    finally:
        s.close()


def test_stopping_at_random_moments_never_hangs_or_stores_twice(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    ident = identity.generate(tmp_path / "device.key")
    rng = random.Random(7)
    mosquitto.stop()  # keep everything in the spool, so it can all be counted

    async def once(commit: str) -> int:
        cfg = config.loads(CONFIG.format(port=mosquitto.port, commit=commit), base_dir=tmp_path)
        gw = Gateway(cfg, ident=ident, shutdown_timeout=0.2)
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        stop.set()
        await asyncio.wait_for(run, 15)  # a hang here is the bug
        return gw.health.readings

    durable = 0
    for i in range(12):
        durable += asyncio.run(once("0 s" if i % 2 else "0.05 s"))
    counts = _stored(tmp_path / "spool.db", ident)
    assert max(counts.values()) == 1, "a reading was stored twice"
    assert sum(counts.values()) == durable, "a durable reading went missing"


def test_stopping_just_after_the_broker_answered_never_hangs(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The sample configuration, stopped in the first milliseconds of a connection, while the
    chain head is read and the birth and Home Assistant's discovery go out and their PUBACKs
    come back: the uplink must stop when told, however its cancellation meets a PUBACK."""
    ident = identity.generate(tmp_path / "device.key")
    sample = (Path(gateway.__file__).parent / "sample.toml").read_text()
    text = sample.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{mosquitto.port}")
    assert text != sample
    rng = random.Random(11)

    async def once() -> None:
        cfg = config.loads(text, base_dir=tmp_path)
        gw = Gateway(cfg, ident=ident)
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        async with asyncio.timeout(15):
            while not gw.health.connected:
                await asyncio.sleep(0.001)
        await asyncio.sleep(rng.uniform(0, 0.06))
        stop.set()
        done, _ = await asyncio.wait({run}, timeout=15)
        if not done:  # the bug: say where each task waits
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(file=stacks)
            raise AssertionError("the gateway did not stop:\n" + stacks.getvalue())
        run.result()

    for _ in range(20):
        asyncio.run(once())


def test_a_task_that_swallows_its_cancellation_is_still_stopped() -> None:
    """What the uplink task does on Python 3.11 when a cancellation meets the PUBACK an
    `asyncio.wait_for` in aiomqtt was waiting for: it goes on as if never cancelled. The
    shutdown cancels again until it is done."""
    from gateway.device.daemon import _cancel_until_done

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed
            await asyncio.sleep(30)
        await asyncio.sleep(30)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        t0 = loop.time()
        await asyncio.wait_for(_cancel_until_done(task), 10)
        assert task.cancelled()
        return loop.time() - t0

    assert asyncio.run(main()) < 5
