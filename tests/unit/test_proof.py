"""Proofs for one reading: made from real signed batches, checked by anyone, and every way of
faking one rejected with a reason a person can act on."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.errors import ProofError
from gateway.wire import limits, payloads, proof
from tests import make_batches as mb

A, B = mb.identity(mb.SEED_A), mb.identity(mb.SEED_B)
FAILED = payloads.encode_record("pm/pm2_5", "ug/m3", None, mb.SEALED - 30.5, 1, ["sensor-error"])


def batch(n: int, ident: Any = A, *, extra: list[bytes] | None = None) -> bytes:
    """A signed batch of `n` records (seq 0) from the production encoders."""
    return mb.Chain(ident).next([*mb.records(n), *(extra or [])]).message


def roundtrip(doc: dict[str, Any]) -> dict[str, Any]:
    """The proof as the relying party gets it: JSON text, parsed again."""
    parsed: dict[str, Any] = proof.parse_proof(json.dumps(doc))
    return parsed


# --- honest proofs ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 1000])
def test_every_reading_of_a_batch_has_a_valid_proof(n: int) -> None:
    message = batch(n)
    for i in range(n):
        full = roundtrip(proof.make_proof(message, i))
        result = proof.check_proof(full)
        assert result.ok and result.signed, (i, result.reason)
        assert result.passed[-1] == "record-in-batch"
        assert full["index"] == i and full["size"] == n and full["did"] == A.did
        compact = proof.check_proof(roundtrip(proof.make_proof(message, i, compact=True)))
        assert compact.ok and not compact.signed
        assert compact.passed == ("format", "record", "reading", "inclusion")


def test_the_proof_shows_the_reading_as_recorded() -> None:
    message = batch(3, extra=[FAILED])
    p = proof.make_proof(message, 1)
    assert p["format"] == "depin-proof-v1"
    assert p["reading"] == {
        "name": "climate/humidity",
        "unit": "%RH",
        "value": 41.5,
        "time": mb.SEALED - 59,
        "score": 0,
        "flags": [],
    }
    assert base64.b64decode(p["batch"]) == message
    failed = proof.make_proof(message, 3)
    assert failed["reading"]["value"] is None and failed["reading"]["flags"] == ["sensor-error"]
    assert proof.check_proof(roundtrip(failed)).ok


def test_compact_proof_leaves_out_the_batch_and_says_what_to_trust() -> None:
    p = proof.make_proof(batch(3), 0, compact=True)
    assert "batch" not in p
    assert "trusted from elsewhere" in p["note"]
    # Its device is only a claim: another did still passes, and the summary says so.
    p["did"] = B.did
    result = proof.check_proof(p)
    assert result.ok and not result.signed
    text = "\n".join(proof.describe(result, "p.json"))
    assert f"{B.did} (claimed, not proven by a compact proof)" in text
    assert "signed by the device: no (compact proof)" in text


def test_summary_cannot_be_forged_by_text_in_the_record() -> None:
    # A compact proof needs no signature, so its record can say anything: a newline in the name
    # must not add a line that looks like the verdict.
    fake = payloads.encode_record("x\n  signed by the device: yes", "Cel", 1, 0, 0, ["a\x1b[2J"])
    message = mb.Chain(A).next([fake, mb.record(1)]).message
    result = proof.check_proof(roundtrip(proof.make_proof(message, 0, compact=True)))
    assert result.ok
    lines = proof.describe(result, "p.json")
    assert "  signed by the device: no (compact proof)" in lines
    assert not any(line.strip() == "signed by the device: yes" for line in lines)
    assert "x\\n  signed by the device: yes" in "\n".join(lines)
    assert "\x1b" not in "\n".join(lines)
    assert (
        rejected({**roundtrip(proof.make_proof(message, 0)), "did": "x\ny"}).failure == "malformed"
    )


# --- forgeries and accidents ------------------------------------------------------------------


def full_proof(n: int = 7, i: int = 3) -> dict[str, Any]:
    return roundtrip(proof.make_proof(batch(n), i))


def rejected(p: Any) -> proof.ProofResult:
    result = proof.check_proof(p)
    assert not result.ok and not result.signed
    return result


def test_tampered_value_is_rejected() -> None:
    p = full_proof()
    p["reading"]["value"] = 99.5
    r = rejected(p)
    assert r.failure == "reading-mismatch"
    assert "value 99.5 is not the record's 43.5" in r.reason


def test_tampered_record_bytes_are_rejected() -> None:
    p = full_proof(i=2)  # climate/temperature 23.25 (f94dd0) becomes 23.75 (f94df0)
    p["record"] = p["record"].replace("f94dd0", "f94df0")
    p["reading"]["value"] = 23.75
    assert rejected(p).failure == "not-included"


def test_tampered_path_is_rejected() -> None:
    for n, i in ((2, 0), (7, 3), (7, 6), (1000, 999)):
        p = full_proof(n, i)
        for j in range(len(p["path"])):
            bad = copy.deepcopy(p)
            h = bad["path"][j]
            bad["path"][j] = h[:-1] + ("0" if h[-1] != "0" else "1")
            assert rejected(bad).failure == "not-included"
        for bad_path in (p["path"][:-1], [*p["path"], p["root"]]):
            assert rejected({**p, "path": bad_path}).failure == "not-included"


def test_wrong_index_is_rejected() -> None:
    p = full_proof(8, 5)
    for other in (0, 4, 6, 7):
        r = rejected({**p, "index": other})
        assert r.failure == "not-included"
        assert f"index {other} of 8" in r.reason
    assert rejected({**p, "index": 8}).failure == "malformed"


def test_wrong_size_is_caught_by_the_signed_batch() -> None:
    # PATH(0, 3) also verifies as leaf 0 of a 4-leaf tree (RFC 9162 binds the size elsewhere):
    # the signed batch pins it.
    p = full_proof(3, 0)
    r = rejected({**p, "size": 4})
    assert r.failure == "batch-mismatch" and "size 4 is not the batch's 3" in r.reason


def test_record_from_another_batch_is_rejected() -> None:
    mine, other = full_proof(7, 2), roundtrip(proof.make_proof(batch(9), 8))
    swapped = {**mine, "record": other["record"], "reading": other["reading"]}
    assert rejected(swapped).failure == "not-included"
    # With that batch's path and root too, the tree checks out but the signed batch does not.
    swapped |= {"path": other["path"], "root": other["root"], "index": 8, "size": 9}
    r = rejected(swapped)
    assert r.failure == "batch-mismatch" and "root" in r.reason


def test_batch_signed_by_another_key_is_rejected() -> None:
    p = full_proof()
    payload = mb.batch_payload(A, 0, payloads.ZERO_PREV, mb.records(7))
    resigned = base64.b64encode(mb.sign(B, payload)).decode()
    r = rejected({**p, "batch": resigned})
    assert r.failure == "did-mismatch"  # the payload names A, the key is B's
    # B's own honest batch, presented as A's reading.
    theirs = roundtrip(proof.make_proof(batch(7, B), 3))
    r = rejected({**theirs, "did": A.did})
    assert r.failure == "batch-mismatch" and "did" in r.reason
    # A's batch with one signature bit flipped.
    raw = bytearray(base64.b64decode(p["batch"]))
    raw[-1] ^= 0x01
    r = rejected({**p, "batch": base64.b64encode(bytes(raw)).decode()})
    assert r.failure == "bad-signature"


def test_a_signed_message_that_is_not_a_batch_is_rejected() -> None:
    birth = mb.sign(A, mb.birth_payload(A), "application/vnd.depin.birth+cbor")
    r = rejected({**full_proof(), "batch": base64.b64encode(birth).decode()})
    assert r.failure == "malformed" and "a signed birth message, not a batch" in r.reason
    with pytest.raises(ProofError, match="a signed birth message, not a batch"):
        proof.make_proof(birth, 0)


def test_other_claims_must_match_the_signed_batch() -> None:
    p = full_proof()
    for key, value in (("seq", 1), ("batch_id", "00" * 32)):
        r = rejected({**p, key: value})
        assert r.failure == "batch-mismatch" and key in r.reason


def test_truncated_json_is_rejected() -> None:
    text = json.dumps(full_proof())
    for cut in (0, 1, len(text) // 2, len(text) - 1):
        r = rejected(text[:cut])
        assert r.failure == "malformed" and "not a JSON proof" in r.reason


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        (b"\xff\xfe\x00garbage", "not a JSON proof"),
        ("NaN", "not a JSON proof"),
        (None, "a proof is a JSON object"),
        ([], "a proof is a JSON object"),
        ({}, "format is None"),
        ({"format": "depin-proof-v2"}, "not 'depin-proof-v1'"),
        ({"format": "depin-proof-v1"}, "missing"),
    ],
)
def test_garbage_is_rejected_with_a_reason(garbage: Any, reason: str) -> None:
    r = rejected(garbage)
    assert r.failure == "malformed" and reason in r.reason


def test_malformed_fields_are_named() -> None:
    p = full_proof()
    cases = {
        "unknown fields": {**p, "verified_by": "me"},
        "seq is not an unsigned integer": {**p, "seq": True},
        "path[0] is not lowercase hex": {**p, "path": ["zz", *p["path"][1:]]},
        "root is 31 bytes": {**p, "root": p["root"][2:]},
        "batch is not base64": {**p, "batch": "!!"},
        "reading must have exactly": {**p, "reading": {"name": "x"}},
    }
    for reason, bad in cases.items():
        r = rejected(bad)
        assert r.failure == "malformed" and reason in r.reason, r.reason
    not_a_record = {**p, "record": "a0"}
    assert rejected(not_a_record).failure == "bad-record"


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=6,
)
FULL = full_proof(5, 2)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(FULL)), JSON)
def test_any_change_to_a_full_proof_is_rejected(key: str, value: Any) -> None:
    if value == FULL[key]:
        return
    assert not proof.check_proof({**FULL, key: value}).ok


@given(st.binary(max_size=200) | st.text(max_size=200) | JSON)
def test_check_proof_never_raises(junk: Any) -> None:
    assert not proof.check_proof(junk).ok


# --- making proofs ----------------------------------------------------------------------------


def test_no_proof_of_a_forged_batch() -> None:
    forged = mb.weak_key_forgery()
    with pytest.raises(ProofError, match="not a valid signed batch: bad-signature"):
        proof.make_proof(forged, 0)
    with pytest.raises(ProofError, match="no record 3: the batch has 3") as e:
        proof.make_proof(batch(3), 3)
    assert e.value.exit_code == 2


def test_find_record_by_name_and_time() -> None:
    message = batch(6)
    assert proof.find_record(message, "climate/humidity", mb.SEALED - 57) == 3
    with pytest.raises(
        ProofError, match=r"nearest: index 1 at \d+, index 3 at \d+, index 5 at"
    ) as e:
        proof.find_record(message, "climate/humidity", mb.SEALED - 56.5)
    assert "batch seq 0" in str(e.value)
    with pytest.raises(ProofError, match=r"no reading pm/pm10 .* it has climate/humidity"):
        proof.find_record(message, "pm/pm10", mb.SEALED)
    twice = batch(2, extra=[mb.record(1)])
    with pytest.raises(ProofError, match=r"2 records .* indexes \[1, 2\]; choose with"):
        proof.find_record(twice, "climate/humidity", mb.SEALED - 59)


# --- the command line -------------------------------------------------------------------------


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True, timeout=60
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8")
    )


def test_cli_prove_then_verify_proof(tmp_path: Path) -> None:
    src = tmp_path / "batch.cose"
    src.write_bytes(batch(8))
    out = tmp_path / "proof.json"
    r = cli(
        "prove",
        str(src),
        "--reading",
        "climate/humidity",
        "--time",
        str(mb.SEALED - 57),
        "-o",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert f"proof of record 3 of 8 (climate/humidity at {mb.SEALED - 57})" in r.stdout
    v = cli("verify-proof", str(out))
    assert v.returncode == 0, v.stdout + v.stderr
    assert f"{out}: valid" in v.stdout
    assert f"device:  {A.did}\n" in v.stdout
    assert "seq 0" in v.stdout
    assert "climate/humidity = 43.5 %RH at 2025-12-31T23:59:03Z" in v.stdout
    assert "signed by the device: yes" in v.stdout

    compact = cli("prove", str(src), "--index", "0", "--compact")
    assert compact.returncode == 0 and "trusted from elsewhere" in compact.stderr
    assert "batch" not in json.loads(compact.stdout)
    (tmp_path / "compact.json").write_text(compact.stdout)
    v = cli("verify-proof", str(tmp_path / "compact.json"))
    assert v.returncode == 0 and "signed by the device: no (compact proof)" in v.stdout

    piped = cli("prove", "-", "--index", "7", stdin=src.read_bytes())
    assert piped.returncode == 0, piped.stderr
    v = cli("verify-proof", "-", stdin=piped.stdout.encode())
    assert v.returncode == 0 and "stdin: valid" in v.stdout


def test_cli_rejects_bad_proofs_and_names_the_file(tmp_path: Path) -> None:
    p = full_proof(8, 2)
    p["reading"]["value"] = 30
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(p))
    r = cli("verify-proof", str(tampered))
    assert r.returncode == 1
    assert f"{tampered}: INVALID reading-mismatch: the reading's value 30" in r.stdout

    truncated = tmp_path / "truncated.json"
    truncated.write_text(json.dumps(full_proof())[:200])
    r = cli("verify-proof", str(truncated))
    assert r.returncode == 2 and f"{truncated}: not a JSON proof" in r.stderr
    missing = tmp_path / "missing.json"
    r = cli("verify-proof", str(missing))
    assert r.returncode == 2 and f"{missing}: cannot read a proof" in r.stderr


def test_cli_prove_refusals(tmp_path: Path) -> None:
    src = tmp_path / "batch.cose"
    src.write_bytes(batch(4))
    r = cli("prove", str(src), "--reading", "climate/temperature", "--time", "1764000000.0")
    assert r.returncode == 2
    assert f"{src}: no reading climate/temperature at 1764000000.0 in batch seq 0" in r.stderr
    assert "nearest: index 0 at" in r.stderr
    r = cli("prove", str(src), "--index", "4")
    assert r.returncode == 2 and "no record 4: the batch has 4" in r.stderr
    r = cli("prove", str(src), "--reading", "climate/temperature")
    assert r.returncode == 2 and "--reading needs --time" in r.stderr
    forged = tmp_path / "forged.cose"
    forged.write_bytes(mb.weak_key_forgery())
    r = cli("prove", str(forged), "--index", "0")
    assert r.returncode == 1 and f"{forged}: not a valid signed batch: bad-signature" in r.stderr
    r = cli("prove", str(tmp_path / "nope.cose"), "--index", "0")
    assert r.returncode == 2 and "nope.cose: cannot read a signed batch" in r.stderr


# --- hostile proof files ----------------------------------------------------------------------


def _verify_proof_peak(path: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """`verify-proof` run on `path` alone: its result and its peak resident set in bytes."""
    script = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-m', 'gateway', 'verify-proof', sys.argv[1]],"
        " capture_output=True, text=True)\n"
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, file=sys.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    err, _, peak = r.stderr.rstrip("\n").rpartition("\n")
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout, err), int(peak)


_NEAR_CAP = proof.MAX_PROOF - 16


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("objects", "[" + "{}," * (_NEAR_CAP // 3) + "{}]", "more than 4 objects and arrays"),
        ("arrays", "[" + "[]," * (_NEAR_CAP // 3) + "[]]", "more than 4 objects and arrays"),
        ("nesting", "[" * 4 + "]" * 4, "objects or arrays nested more than 3 deep"),
        ("numbers", '{"path": [' + "1.5," * (_NEAR_CAP // 4) + "1]}", "more than 4096 values"),
        ("strings", '{"path": [' + '"a",' * (_NEAR_CAP // 4) + '"a"]}', "more than 4096 values"),
    ],
)
def test_a_file_of_nothing_but_structure_is_refused_before_json_builds_it(
    tmp_path: Path, name: str, text: str, reason: str
) -> None:
    """8 MiB of `{},` took verify-proof to 243 MB resident when json.loads built it whole; the
    structure is counted on the text instead, so the file costs about its own size."""
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    r, peak = _verify_proof_peak(path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{path}: not a JSON proof: {reason}" in r.stderr
    # An honest verify-proof of a small file peaks near 45 MiB; the file itself is 8 MiB.
    assert peak < 45 * 1024 * 1024 + 4 * len(text), f"peak RSS {peak >> 20} MiB"


def test_text_in_a_proof_is_not_structure() -> None:
    """Brackets and commas inside strings (a reading's name, the note) are not counted."""
    doc = json.loads(json.dumps(full_proof()))
    doc["note"] = "{[," * 10_000 + '\\"'
    assert proof.shape_refusal(json.dumps(doc)) is None
    assert proof.parse_proof(json.dumps(doc))["note"] == doc["note"]
    unterminated = '{"note": "' + "{}" * 100
    with pytest.raises(ValueError, match="more than 4 objects"):
        proof.parse_proof(unterminated)  # not JSON either way; refused on its shape first


def test_the_largest_full_proof_is_within_the_bounds() -> None:
    """A full proof of a batch at the 4 MiB cap (the base64 batch is one string) with a path of
    64 hashes and a reading with flags passes the shape check and the size cap."""
    doc = json.loads(json.dumps(full_proof()))
    doc["batch"] = base64.b64encode(b"\0" * limits.DEFAULT_CAP).decode("ascii")
    doc["path"] = ["00" * 32] * 64
    doc["reading"]["flags"] = ["f"] * 1000
    text = json.dumps(doc, indent=2)
    assert len(text) <= proof.MAX_PROOF
    assert proof.shape_refusal(text) is None
