"""`depin-gateway verify` against an outsider with publish rights on the broker: the real
process, under a memory limit, over files and over a live mosquitto, fed every class of hostile
message signed by a throwaway key (so the signature passes and the payload is what is judged).
It finishes (files) or stays up for its whole time (live), says "malformed" once per hostile
message, stays under its limit, and still reports an honest batch sent after the junk valid."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.wire import cose, limits, payloads
from gateway.wire.identity import Identity
from tests import hostile
from tests import make_batches as mb
from tests.brokers import Mosquitto
from tests.publisher import publisher

P = "depin/v1"
# An honest `verify` of a file peaks at about 35 MiB resident and runs within 200 MiB of address
# space (Python 3.11, two cores); the limit leaves room for that and for live mode's MQTT
# stack, not for a bomb (the sharing bomb of 31 levels took the OOM killer before the scan).
ADDRESS_SPACE = 400 * 1024 * 1024
RESIDENT = 120 * 1024 * 1024


def _hostile_messages() -> dict[str, tuple[str, bytes]]:
    """name -> (topic kind, message): each class, signed by a throwaway key."""
    out: dict[str, tuple[str, bytes]] = {}

    def batch(records: bytes) -> bytes:
        ident = hostile.throwaway()
        return hostile.signed(hostile.batch_map(ident, records), ident=ident)

    out["sharing-bomb"] = ("batch", batch(hostile.sharing_bomb(31)))
    out["self-reference"] = ("batch", batch(hostile.self_reference()))
    for name, item in hostile.unknown_tags().items():
        out[f"tag-{name}"] = ("batch", batch(hostile.array(item)))
    out["deep-nesting"] = ("batch", batch(hostile.deep_nesting(100_000)))
    for name, item in hostile.huge_lengths().items():
        out[f"huge-{name}"] = ("batch", batch(item))
    out["over-cap-batch"] = ("batch", hostile.signed(hostile.oversized(limits.CAPS["batch"] + 1)))
    big_birth = hostile.signed(hostile.oversized(limits.CAPS["birth"] + 1), cose.TYP_BIRTH)
    out["over-cap-birth"] = ("birth", big_birth)
    out["bomb-as-birth"] = ("birth", hostile.signed(hostile.sharing_bomb(31), cose.TYP_BIRTH))
    return out


def _verify(*args: str) -> hostile.Measured:
    return hostile.Measured("gateway", "verify", *args, limit=ADDRESS_SPACE)


def _finish(p: hostile.Measured, timeout: float) -> tuple[int, str, str, int]:
    """Exit code, stdout, stderr and the peak resident set of the finished process."""
    return p.finish(timeout)


def test_verify_files_under_a_memory_limit(tmp_path: Path) -> None:
    junk = _hostile_messages()
    for name, (_, message) in junk.items():
        (tmp_path / f"{name}.cose").write_bytes(message)
    chain = mb.Chain(mb.identity(mb.SEED_A))
    (tmp_path / "zz-honest.cose").write_bytes(chain.take(1)[0].message)
    code, out, err, peak = _finish(_verify(str(tmp_path)), 120)
    assert code == 1, out + err
    lines = out.splitlines()
    for name in junk:
        (line,) = [x for x in lines if x.startswith(f"{tmp_path / name}.cose: ")]
        assert ": malformed " in line, line
    (honest,) = [x for x in lines if "zz-honest.cose: " in x]
    assert ": valid " in honest
    assert f"{len(junk)} malformed" in out
    assert peak < RESIDENT, f"peak RSS {peak >> 20} MiB"


def test_verify_live_under_a_memory_limit(mosquitto: Mosquitto) -> None:
    junk = _hostile_messages()
    p = _verify("--broker", mosquitto.url, "--seconds", "12")
    with publisher(mosquitto.port, client_id="outsider") as client:
        time.sleep(3)  # the verifier subscribes within its first seconds
        for name, (kind, message) in junk.items():
            client.publish(f"{P}/{name}/{kind}", message, qos=1).wait_for_publish(10)
        honest = mb.Chain(mb.identity(mb.SEED_A)).take(1)[0].message
        dev = mb.identity(mb.SEED_A).device_id
        client.publish(f"{P}/{dev}/batch", honest, qos=1).wait_for_publish(10)
        time.sleep(1)
        assert p.poll() is None, "verify ended before its time"
    code, out, err, peak = _finish(p, 60)
    assert code == 1, out + err
    lines = out.splitlines()
    for name, (kind, _) in junk.items():
        (line,) = [x for x in lines if x.startswith(f"{P}/{name}/{kind}: ")]
        assert ": malformed " in line, line
    (valid,) = [x for x in lines if x.startswith(f"{P}/{dev}/batch: ")]
    assert ": valid " in valid
    assert peak < RESIDENT, f"peak RSS {peak >> 20} MiB"


def _large_valid_batch(ident: Identity) -> bytes:
    """A valid first batch of just under the batch cap: a thousand records of 4 kB names."""
    recs = [
        payloads.encode_record("x" * 4100, "Cel", 21.5, mb.SEALED - 60, 0.0, [])
        for _ in range(1000)
    ]
    message = mb.sign(ident, mb.batch_payload(ident, 0, payloads.ZERO_PREV, recs))
    assert limits.CAPS["batch"] - 128 * 1024 < len(message) <= limits.CAPS["batch"]
    return message


def test_verify_live_holds_no_accepted_message(mosquitto: Mosquitto) -> None:
    """Valid batches of nearly 4 MiB, each from a new throwaway key: each starts a chain and is
    accepted, and none is kept. Holding them took a verifier past its limit after 64."""
    n = 90
    p = _verify("--broker", mosquitto.url, "--seconds", "30")
    with publisher(mosquitto.port, client_id="outsider") as client:
        time.sleep(3)  # the verifier subscribes within its first seconds
        for i in range(n):
            ident = hostile.throwaway()
            message = _large_valid_batch(ident)
            client.publish(f"{P}/{ident.device_id}/batch", message, qos=1).wait_for_publish(30)
            assert p.poll() is None, f"verify ended after {i} batches"
    code, out, err, peak = _finish(p, 90)
    assert code == 0, out + err
    assert f"{n} messages: {n} valid; 0 invalid" in out, out[-2000:] + err
    assert peak < RESIDENT, f"peak RSS {peak >> 20} MiB"
