"""Sensirion's I2C framing, shared by the SCD4x and SHT4x drivers.

Every data word on the wire, read or written, is two bytes MSB first followed by a CRC-8 of those
two bytes (polynomial 0x31 = x^8 + x^5 + x^4 + 1, init 0xFF, no reflection, no final XOR;
CRC(BE EF) = 0x92). A response whose any word fails its CRC is rejected as a whole: a value is
never taken from a word with a bad CRC.
"""

from __future__ import annotations

from gateway.core.errors import SensorError

__all__ = ["CRCError", "crc8", "pack_words", "unpack_words"]

CRC_POLYNOMIAL = 0x31
CRC_INIT = 0xFF
WORD_SIZE = 3  # 2 data bytes + CRC


def _table() -> tuple[int, ...]:
    out = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLYNOMIAL) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        out.append(crc)
    return tuple(out)


_TABLE = _table()


class CRCError(SensorError, ValueError):
    """A word read back from a Sensirion chip failed its CRC (noise, wiring, supply)."""


def crc8(data: bytes) -> int:
    """Sensirion CRC-8 of `data` (the datasheet computes it over each 2-byte word)."""
    crc = CRC_INIT
    for byte in data:
        crc = _TABLE[crc ^ byte]
    return crc


def pack_words(*words: int) -> bytes:
    """Words as they go on the wire: MSB, LSB, CRC for each."""
    out = bytearray()
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise ValueError(f"word {word!r} is outside 0..0xFFFF")
        pair = word.to_bytes(2, "big")
        out += pair
        out.append(crc8(pair))
    return bytes(out)


def unpack_words(data: bytes, count: int | None = None) -> tuple[int, ...]:
    """The words in a response, every CRC checked. Raises CRCError naming the first bad word,
    ValueError when the length is not `count` words (or not a whole number of words)."""
    if len(data) % WORD_SIZE or (count is not None and len(data) != count * WORD_SIZE):
        want = f"{count * WORD_SIZE}" if count is not None else "a multiple of 3"
        raise ValueError(f"expected {want} bytes, got {len(data)}")
    words = []
    for i in range(0, len(data), WORD_SIZE):
        pair = data[i : i + 2]
        expected = crc8(pair)
        if data[i + 2] != expected:
            raise CRCError(
                f"CRC mismatch in word {i // WORD_SIZE} ({pair.hex()}: got 0x{data[i + 2]:02x}, "
                f"expected 0x{expected:02x})"
            )
        words.append(int.from_bytes(pair, "big"))
    return tuple(words)
