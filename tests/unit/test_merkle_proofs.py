"""Merkle inclusion proofs (RFC 9162 section 2.1.3) against brute force, for every leaf of every
tree of 1 to 64 leaves: what `depin-gateway prove` and `verify-proof` stand on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire import merkle
from tests.vectors.reference import ref_mth, ref_path

LEAVES = [i.to_bytes(2, "big") * (i % 3) for i in range(64)]  # some empty, some not
MERKLE = json.loads((Path(__file__).parents[1] / "vectors" / "merkle.json").read_text())


def _flip(b: bytes, i: int = 0) -> bytes:
    return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]


def shape(m: int, n: int) -> list[str]:
    """Which side each PATH(m, n) hash sits on, from the leaf up (RFC 9162 section 2.1.3.1)."""
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    return [*shape(m, k), "right"] if m < k else [*shape(m - k, n - k), "left"]


@pytest.mark.parametrize("n", range(1, 65))
def test_every_leaf_of_every_tree_up_to_64(n: int) -> None:
    leaves = LEAVES[:n]
    root = ref_mth(leaves)
    for m in range(n):
        path = merkle.inclusion_proof(m, leaves)
        assert path == ref_path(m, leaves)
        assert merkle.verify_inclusion(leaves[m], m, n, path, root)
        # Any other leaf, position, root, or a path with one hash changed, missing or extra.
        assert not merkle.verify_inclusion(leaves[m] + b"x", m, n, path, root)
        assert not merkle.verify_inclusion(leaves[m], m, n, path, _flip(root))
        assert not any(
            merkle.verify_inclusion(leaves[m], o, n, path, root) for o in range(n) if o != m
        )
        for i in range(len(path)):
            bad = [*path[:i], _flip(path[i], 31), *path[i + 1 :]]
            assert not merkle.verify_inclusion(leaves[m], m, n, bad, root)
        if path:
            assert not merkle.verify_inclusion(leaves[m], m, n, path[:-1], root)
        assert not merkle.verify_inclusion(leaves[m], m, n, [*path, root], root)
        assert not merkle.verify_inclusion(leaves[m], m, m, path, root)  # index == size
        assert not merkle.verify_inclusion(leaves[m], -1, n, path, root)


@pytest.mark.parametrize("n", range(1, 65))
def test_a_wrong_size_passes_only_where_the_path_has_the_same_shape(n: int) -> None:
    """RFC 9162's verification checks the path's shape, not the size itself: PATH(0, 3) also
    verifies as a leaf of a 4-leaf tree. In the CT log the size is signed with the root; in a
    proof it is the signed batch that pins it (test_proof.py), and docs/proofs.md says that a
    compact proof's size must be trusted like its root."""
    leaves = LEAVES[:n]
    root = ref_mth(leaves)
    for m in range(n):
        path = merkle.inclusion_proof(m, leaves)
        for size in range(m + 1, 80):
            accepted = merkle.verify_inclusion(leaves[m], m, size, path, root)
            assert accepted == (shape(m, size) == shape(m, n)), (m, n, size)


@pytest.mark.parametrize("tree", MERKLE["trees"][1:], ids=lambda t: f"n={t['size']}")
def test_reference_vector_proofs_verify_and_tampering_fails(tree: dict[str, Any]) -> None:
    leaves = [bytes.fromhex(x) for x in MERKLE["leaves"]][: tree["size"]]
    root = bytes.fromhex(tree["root"])
    for i, proof_hex in tree["proofs"].items():
        path = [bytes.fromhex(h) for h in proof_hex]
        assert merkle.verify_inclusion(leaves[int(i)], int(i), len(leaves), path, root)
        for j in range(len(path)):
            bad = [*path[:j], _flip(path[j]), *path[j + 1 :]]
            assert not merkle.verify_inclusion(leaves[int(i)], int(i), len(leaves), bad, root)


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=300), st.data())
def test_random_trees(leaves: list[bytes], data: st.DataObject) -> None:
    m = data.draw(st.integers(0, len(leaves) - 1))
    path = merkle.inclusion_proof(m, leaves)
    root = merkle.root(leaves)
    assert root == ref_mth(leaves)
    assert merkle.verify_inclusion(leaves[m], m, len(leaves), path, root)
    if path:
        j = data.draw(st.integers(0, len(path) - 1))
        byte = data.draw(st.integers(0, 31))
        bad = [*path[:j], _flip(path[j], byte), *path[j + 1 :]]
        assert not merkle.verify_inclusion(leaves[m], m, len(leaves), bad, root)


def test_index_outside_the_tree_is_refused() -> None:
    with pytest.raises(IndexError, match="leaf 3 outside a tree of 3"):
        merkle.inclusion_proof(3, LEAVES[:3])
    assert not merkle.verify_inclusion(b"", 0, 0, [], merkle.root([]))
