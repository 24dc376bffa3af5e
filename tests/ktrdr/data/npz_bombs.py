"""Crafted ``.npz`` files for the size-limit tests: a few kilobytes compressed that inflate to megabytes,
written member by member so that building them never holds the inflated bytes."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np

from ktrdr.data.validation import OHLCV

MEMBERS = ("timestamp", *OHLCV)
_ZEROS = bytes(1024 * 1024)


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def npz(members: dict[str, tuple[bytes, int]], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``name -> (npy header, bytes of zeros after it)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as z:
        for name, (header, zeros) in members.items():
            with z.open(name, "w") as member:
                member.write(header)
                while zeros > 0:
                    member.write(_ZEROS[:zeros])
                    zeros -= len(_ZEROS)
    return out.getvalue()


def dataset_bomb(*, declared_bars: int, payload_bars: int, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """Six well-formed member names whose timestamp member declares ``declared_bars`` and holds
    ``payload_bars`` (the others are empty)."""
    members = {"timestamp.npy": (npy_header("<i8", (declared_bars,)), 8 * payload_bars)}
    members.update({f"{c}.npy": (npy_header("<f8", (0,)), 0) for c in OHLCV})
    return npz(members, compression=compression)


def understate(data: bytes, name: str, size: int) -> bytes:
    """``data`` with the uncompressed size of member ``name`` set to ``size`` in both its local
    header and the central directory, as a forger would."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    struct.pack_into("<L", out, info.header_offset + 22, size)
    # The central entry of the member: found by its name after the fixed 46 bytes.
    central = next(at for at in _all(bytes(out), b"PK\x01\x02") if out[at + 46:at + 46 + len(name)] == name.encode())
    struct.pack_into("<L", out, central + 24, size)
    return bytes(out)


def _all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found
