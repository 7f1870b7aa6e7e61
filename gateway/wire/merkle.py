"""Merkle tree hashing of RFC 9162 section 2.1: root, inclusion proofs and their verification."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

_EMPTY = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of_hashes(level: Sequence[bytes]) -> bytes:
    """Root over leaf hashes. Pairing level by level and promoting an odd last node gives the
    same tree as RFC 9162's split at the largest power of two below n."""
    if not level:
        return _EMPTY
    nodes = list(level)
    while len(nodes) > 1:
        paired = [node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        if len(nodes) % 2:
            paired.append(nodes[-1])
        nodes = paired
    return nodes[0]


def root(leaves: Sequence[bytes]) -> bytes:
    """Root over the raw leaf data (each leaf is hashed with the 0x00 prefix)."""
    return root_of_hashes([leaf_hash(x) for x in leaves])


def _split(n: int) -> int:
    """Largest power of two strictly below n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_proof(index: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1 for leaf `index`."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} outside a tree of {len(leaves)}")
    hashes = [leaf_hash(x) for x in leaves]

    def path(m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*path(m, lo, lo + k), root_of_hashes(hashes[lo + k : hi])]
        return [*path(m - k, lo + k, hi), root_of_hashes(hashes[lo : lo + k])]

    return path(index, 0, len(hashes))


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root_: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does `proof` place `leaf` at `index` in a tree with `root_`?"""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(leaf)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_
