"""Decompression bombs for the image-size tests: real, decodable PNGs of huge size in about a kilobyte per 10 M
pixels, written in milliseconds."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 20000, height: int = 20000, rows_per_block: int = 100) -> bytes:
    """A valid black RGB PNG of width x height whose IHDR gives its true size: decoding it allocates 3 bytes per
    pixel (1.2 GB at 20000 x 20000). The zlib stream repeats one independently decodable deflate segment (rows
    of zeros, ended by a full flush, which restarts the compressor), so it is made without compressing every
    row; its Adler-32 is that of all the rows (zeros: in closed form), as an inflater checks."""
    assert height % rows_per_block == 0
    block = (b"\0" * (1 + 3 * width)) * rows_per_block  # each row: filter type 0, then zero pixels
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # with the 2-byte zlib header
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)  # the same rows, no header
    final = compressor.flush(zlib.Z_FINISH)[:-4]  # the last (empty) block, without its Adler-32 of two blocks
    adler = ((height * (1 + 3 * width)) % 65521) << 16 | 1  # Adler-32 of n zero bytes: A = 1, B = n mod 65521
    stream = first + again * (height // rows_per_block - 1) + final + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
