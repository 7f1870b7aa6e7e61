"""When the pipeline commits: a backlog drains as the broker acknowledges it, not one sealed-ahead
window per commit interval; a fast sensor fills every batch; a slow one gets no extra commits.

Nothing here is a timing figure. Where time matters, the commit interval is long (an hour) so
that what is asserted can only happen through the path under test, and any wait is a guard
against a hang, not a measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.config import settings as config
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.commit import CommitBuffer
from gateway.device.daemon import Gateway
from gateway.device.seal import SealedBatch
from gateway.device.spool import Spool
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.spools import make_spool, recs

HOUR = 3600.0
#: a guard against a hang, far longer than any of these waits takes
GUARD = 60.0


class Broker:
    """Stands in for the uplink: sealed batches are offered to it, and while it is online it
    acknowledges each one on the event loop, as the uplink's PUBACK handler does."""

    def __init__(self) -> None:
        self.online = False
        self.waiting: list[tuple[int, int]] = []
        self.sealed: list[tuple[int, int]] = []  # (seq, n), in order
        self.pipeline: CommitBuffer | None = None

    def offer(self, batch: SealedBatch) -> None:
        seq, n = batch.seq, batch.n
        self.sealed.append((seq, n))
        self.waiting.append((seq, n))
        if self.online:
            asyncio.get_running_loop().call_soon(self.flush)

    def back(self) -> None:
        self.online = True
        self.flush()

    def flush(self) -> None:
        assert self.pipeline is not None
        todo, self.waiting = self.waiting, []
        for seq, n in todo:
            self.pipeline.acked(seq, n)


def _pipeline(
    spool: Spool, broker: Broker, *, interval: float, bmr: int, health: Health | None = None
) -> CommitBuffer:
    p = CommitBuffer(
        spool,
        executor=ThreadPoolExecutor(1),
        health=health or Health(),
        commit_interval=interval,
        batch_max_readings=bmr,
        outbox=broker,
        clock_source=lambda: "ntp",
    )
    broker.pipeline = p
    return p


def _readings(n: int, start: int = 0) -> list[Reading]:
    t = time.time()
    return [
        Reading("c", "temperature", "Cel", 20.0 + i / 100, t + i * 1e-3, True, 0.0, [])
        for i in range(start, start + n)
    ]


async def _until(cond: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD):
        while not cond():
            await asyncio.sleep(0.005)


def _counting(spool: Spool) -> list[tuple[int, int]]:
    """Wrap `spool.commit` to record (readings handed, acknowledgements handed) per commit."""
    calls: list[tuple[int, int]] = []
    real = spool.commit

    def commit(new: Any, acked: Any = (), **kw: Any) -> Any:
        calls.append((len(new), len(acked)))
        return real(new, acked, **kw)

    spool.commit = commit  # type: ignore[method-assign]
    return calls


def test_a_backlog_drains_as_acknowledgements_arrive_not_per_interval(tmp_path: Path) -> None:
    # seal_ahead 2, 20 batches of backlog, a commit interval of an hour: before the first
    # interval ends, only acknowledgements can make the spool seal beyond the first 2 batches.
    spool = make_spool(tmp_path / "s.db", seal_ahead=2, batch_max_readings=10)
    broker = Broker()
    health = Health()
    p = _pipeline(spool, broker, interval=HOUR, bmr=10, health=health)

    async def main() -> None:
        run = asyncio.create_task(p.run())
        for i in range(20):  # broker away: full batches are committed, 2 sealed, the rest wait
            p.accept(_readings(10, 10 * i))
            await _until(lambda i=i: health.readings == 10 * (i + 1))  # type: ignore[misc]
        assert len(broker.sealed) == 2
        assert spool.stats().pending == 180
        broker.back()
        await _until(lambda: health.readings_acked == 200)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await p.commit()  # forget the last acknowledgements, as the daemon's shutdown does

    asyncio.run(main())
    assert [n for _, n in broker.sealed] == [10] * 20
    assert [s for s, _ in broker.sealed] == list(range(20))
    st = spool.stats()
    assert (st.pending, st.sealed) == (0, 0)
    spool.close()


def test_a_spool_opened_with_readings_it_can_seal_seals_them_at_once(tmp_path: Path) -> None:
    # A previous run left 2 sealed batches (its whole window) and 30 pending readings; this
    # run's window holds 4, and no acknowledgement will come to wake the pipeline.
    first = make_spool(tmp_path / "s.db", seal_ahead=2, batch_max_readings=10)
    first.commit(recs(50))
    assert (first.stats().pending, first.stats().sealed) == (30, 2)
    first.close()
    spool = make_spool(tmp_path / "s.db", seal_ahead=4, batch_max_readings=10)
    broker = Broker()
    p = _pipeline(spool, broker, interval=HOUR, bmr=10)

    async def main() -> None:
        run = asyncio.create_task(p.run())
        await _until(lambda: len(broker.sealed) == 2)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(main())
    assert spool.stats().pending == 10
    spool.close()


def test_at_full_speed_every_batch_but_the_last_is_full(tmp_path: Path) -> None:
    # A window wider than the burst: what is asserted is how batches are cut, not the drain.
    spool = make_spool(tmp_path / "s.db", seal_ahead=1000, batch_max_readings=50)
    calls = _counting(spool)
    broker = Broker()
    health = Health()
    p = _pipeline(spool, broker, interval=HOUR, bmr=50, health=health)
    total = 7 * 17 * 30  # a sensor of 7 quantities, yielding to the loop every 17 reads
    left: list[int] = []

    async def main() -> None:
        run = asyncio.create_task(p.run())
        broker.back()
        fed = 0
        while fed < total:
            for _ in range(17):
                p.accept(_readings(7, fed))
                fed += 7
            await asyncio.sleep(0)
        # Every whole batch goes without waiting for the interval; the rest stays in memory.
        await _until(
            lambda: health.readings > total - 50 and health.readings_acked == health.readings
        )
        left.append(p.buffered)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await p.commit(force_seal=True)  # the daemon's shutdown seals the partial batch

    asyncio.run(main())
    sizes = [n for _, n in broker.sealed]
    assert sum(sizes) == total
    assert sizes[:-1] == [50] * (len(sizes) - 1)
    assert sizes[-1] == total % 50
    assert left == [total % 50], "the partial batch waits in memory"
    # Early commits took whole batches only.
    assert all(n % 50 == 0 for n, _ in calls[:-1])
    spool.close()


def test_a_slow_sensor_gets_no_commit_of_acknowledgements_alone(tmp_path: Path) -> None:
    # The broker acknowledges every batch at once. Deleting an acknowledged batch waits for the
    # next commit of readings: acknowledgements alone never commit while nothing is held back.
    # As with the defaults, the interval is batch_max_age: every commit seals what it gets.
    spool = make_spool(tmp_path / "s.db", seal_ahead=16, batch_max_readings=500, batch_max_age=0.3)
    calls = _counting(spool)
    broker = Broker()
    health = Health()
    p = _pipeline(spool, broker, interval=0.3, bmr=500, health=health)

    async def main() -> None:
        run = asyncio.create_task(p.run())
        broker.back()
        for i in range(24):
            p.accept(_readings(2, 2 * i))
            await asyncio.sleep(0.05)
        await _until(lambda: health.batches_acked >= 3)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(main())
    assert calls, "nothing was committed"
    assert all(n > 0 for n, _ in calls), f"a commit without readings: {calls}"
    spool.close()


def test_what_an_early_commit_leaves_in_memory_goes_at_the_running_interval(
    tmp_path: Path,
) -> None:
    # interval 3 s: at 1.5 s a batch and a half arrives; the whole batch is committed at once,
    # the half stays in memory. It must go at the interval already running (3 s), not one
    # interval after the early commit (4.5 s): a reading accepted at 3.75 s tells which.
    spool = make_spool(tmp_path / "s.db", seal_ahead=16, batch_max_readings=10)
    calls = _counting(spool)
    broker = Broker()
    p = _pipeline(spool, broker, interval=3.0, bmr=10)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        run = asyncio.create_task(p.run())
        broker.back()
        t0 = loop.time()
        await asyncio.sleep(1.5)
        p.accept(_readings(15))
        await asyncio.sleep(t0 + 3.75 - loop.time())
        p.accept(_readings(1, 100))
        await asyncio.sleep(t0 + 5.0 - loop.time())
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await p.commit(force_seal=True)

    asyncio.run(main())
    assert [n for n, _ in calls if n] == [10, 5, 1]
    spool.close()


CONFIG = """
[device]
name = "backlog"
key_file = "device.key"
[spool]
path = "spool.db"
commit_interval = "1 h"
[uplink]
url = "mqtt://127.0.0.1:{port}"
batch_max_readings = 20
max_inflight = 1
reconnect_max = "1 s"
[clock]
mode = "synced"
[[sensor]]
id = "env"
driver = "simulated"
kind = "all"
"""


def test_the_gateway_drains_a_backlog_when_the_broker_returns(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # The real daemon and broker; the commit interval is an hour, so everything beyond the
    # first 2 batches (max_inflight 1 x 2) is sealed only because acknowledgements made room.
    # Started with the broker away, it seals nothing before it read the chain head there.
    identity.generate(tmp_path / "device.key")
    cfg = config.loads(CONFIG.format(port=mosquitto.port), base_dir=tmp_path)
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file))
    assert gw.spool.seal_ahead == 2
    (sensor,) = gw.sensors
    mosquitto.stop()

    async def idle() -> None:  # the test feeds the readings
        await asyncio.Event().wait()

    sensor.run = idle  # type: ignore[method-assign]

    async def main() -> None:
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        await _until(lambda: gw.health.connects == 0 and gw.health.uplink_errors > 0)
        for i in range(20):
            gw.sampler.accept(_readings(20, 20 * i))
            await _until(lambda i=i: gw.health.readings == 20 * (i + 1))  # type: ignore[misc]
        assert gw.health.batches_sealed == 0
        mosquitto.start()
        await _until(lambda: gw.health.readings_acked == 400)
        stop.set()
        await asyncio.wait_for(run, GUARD)

    asyncio.run(main())
    h = gw.health
    assert (h.batches_sealed, h.batches_acked) == (20, 20)
    s = make_spool(tmp_path / "spool.db", identity=gw.identity, batch_max_readings=20)
    st = s.stats()
    s.close()
    assert (st.pending, st.sealed) == (0, 0)
