"""The single-object fingerprint of a schema: CRC-64-AVRO of its Parsing Canonical Form.

What names a writer schema in a single-object message header
(:mod:`pipeline.codec.single_object`) and keys it in a schema store
(:mod:`pipeline.codec.schema_store`); both import it from here, neither from the other.
"""

from __future__ import annotations

from typing import Final

from fastavro.schema import to_parsing_canonical_form

from pipeline.codec.avro_schema import AvroSchema

__all__ = ["crc64_avro", "fingerprint", "parsing_canonical_form"]

_EMPTY64: Final = 0xC15D213AA4D7A795


def _crc64_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


_CRC64_TABLE: Final = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint (CRC-64-AVRO) of ``data``, as an unsigned int."""
    fp = _EMPTY64
    table = _CRC64_TABLE
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def parsing_canonical_form(schema: AvroSchema) -> str:
    """The schema's Parsing Canonical Form (Avro spec), via fastavro."""
    return str(to_parsing_canonical_form(schema))


def fingerprint(schema: AvroSchema) -> bytes:
    """The 8 fingerprint bytes of ``schema`` exactly as they appear in a message header.

    CRC-64-AVRO of the UTF-8 Parsing Canonical Form, little-endian.
    """
    pcf = parsing_canonical_form(schema).encode("utf-8")
    return crc64_avro(pcf).to_bytes(8, "little")
