"""Read-only zarr v3 store exposing one slide level; each chunk is one native tile, decoded on demand.

Keys: ``zarr.json`` (array metadata) and ``c/{row}/{col}/0`` (raw (th, tw, 3) uint8 bytes, "bytes"
codec, no compression). Edge chunks read only the valid area and are padded with white (the fill
value), so zarr never sees garbage. Reads run in worker threads so concurrent chunk requests overlap.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

if TYPE_CHECKING:
    from protoseg.slide.slide import Slide

logger = logging.getLogger(__name__)

FILL = 255  # white, like out-of-bounds slide pixels


def _reopen(path: str, backend: str, level: int) -> SlideLevelStore:
    """Unpickling helper: reopen the slide in the new process (e.g. a dask.distributed worker)."""
    from protoseg.slide.opener import open_slide

    return SlideLevelStore(open_slide(path, backend=backend), level)


class SlideLevelStore(Store):
    """zarr v3 ``Store`` for one level of a ``Slide`` (read-only, listing supported)."""

    #: decode chunks in worker threads (concurrent reads overlap) instead of on zarr's event loop
    offload: bool = True

    def __init__(self, slide: Slide, level: int) -> None:
        super().__init__(read_only=True)
        self._slide = slide
        self.level = int(level)
        self.width, self.height = slide.level_dimensions[self.level]
        self.tile_w, self.tile_h = slide.tile_size(self.level)
        self.grid = (-(-self.height // self.tile_h), -(-self.width // self.tile_w))  # (rows, cols)
        self._view = slide.level_pixels(self.level)
        mpp = slide.mpp
        ds = slide.level_downsamples[self.level]
        meta = {
            "zarr_format": 3,
            "node_type": "array",
            "shape": [self.height, self.width, 3],
            "data_type": "uint8",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [self.tile_h, self.tile_w, 3]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": FILL,
            "codecs": [{"name": "bytes"}],
            "dimension_names": ["y", "x", "c"],
            "attributes": {
                "level": self.level,
                "downsample": ds,
                "mpp": None if mpp is None else mpp * ds,
                "source": str(slide.path),
            },
        }
        self._meta = json.dumps(meta).encode()

    # ---- chunk decoding -------------------------------------------------------------------------
    def _chunk_index(self, key: str) -> tuple[int, int] | None:
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != "c" or parts[3] != "0":
            return None
        try:
            row, col = int(parts[1]), int(parts[2])
        except ValueError:
            return None
        if 0 <= row < self.grid[0] and 0 <= col < self.grid[1]:
            return row, col
        return None

    def read_chunk(self, row: int, col: int) -> np.ndarray:
        """Full-size (tile_h, tile_w, 3) chunk; the part beyond the level edge is FILL."""
        x, y = col * self.tile_w, row * self.tile_h
        w, h = min(self.tile_w, self.width - x), min(self.tile_h, self.height - y)
        pixels = self._view[y : y + h, x : x + w]  # one backend read, same pixels as the dask pyramid
        if w == self.tile_w and h == self.tile_h:
            return pixels
        out = np.full((self.tile_h, self.tile_w, 3), FILL, np.uint8)
        out[:h, :w] = pixels
        return out

    @staticmethod
    def _slice(data: bytes | np.ndarray, byte_range: ByteRequest | None) -> Any:
        if byte_range is None:
            return data
        n = len(data)
        if isinstance(byte_range, RangeByteRequest):
            return data[byte_range.start : min(byte_range.end, n)]
        if isinstance(byte_range, OffsetByteRequest):
            return data[byte_range.offset :]
        if isinstance(byte_range, SuffixByteRequest):
            return data[max(0, n - byte_range.suffix) :]
        raise TypeError(f"unexpected byte range {byte_range!r}")

    # ---- Store API ------------------------------------------------------------------------------
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key == "zarr.json":
            return prototype.buffer.from_bytes(self._slice(self._meta, byte_range))
        idx = self._chunk_index(key)
        if idx is None:
            return None
        if self.offload:
            chunk = await asyncio.to_thread(self.read_chunk, *idx)
        else:
            chunk = self.read_chunk(*idx)
        flat = chunk.reshape(-1).view(np.uint8)
        return prototype.buffer.from_array_like(self._slice(flat, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key == "zarr.json" or self._chunk_index(key) is not None

    @property
    def supports_writes(self) -> bool:
        return False

    @property
    def supports_deletes(self) -> bool:
        return False

    @property
    def supports_listing(self) -> bool:
        return True

    @property
    def supports_consolidated_metadata(self) -> bool:
        return False

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    def with_read_only(self, read_only: bool = False) -> SlideLevelStore:
        if not read_only:
            raise ValueError("SlideLevelStore is read-only: slides are never modified")
        return self

    def _keys(self) -> Iterable[str]:
        yield "zarr.json"
        for r in range(self.grid[0]):
            for c in range(self.grid[1]):
                yield f"c/{r}/{c}/0"

    async def list(self) -> AsyncIterator[str]:
        for key in self._keys():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._keys():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        if prefix == "":
            yield "zarr.json"
            yield "c"
        elif prefix == "c":
            for r in range(self.grid[0]):
                yield str(r)
        elif prefix.startswith("c/") and prefix.count("/") == 1:
            for c in range(self.grid[1]):
                yield str(c)
        elif prefix.startswith("c/") and prefix.count("/") == 2:
            yield "0"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SlideLevelStore) and other._slide is self._slide and other.level == self.level

    def __hash__(self) -> int:
        return hash((id(self._slide), self.level))

    def __repr__(self) -> str:
        return f"SlideLevelStore({str(self._slide.path)!r}, level={self.level})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self._slide.path), self._slide.backend.value, self.level))
