"""One COG from pieces compressed in many processes: tile bytes copied, never decoded again.

A scene's raster is cut into *pieces*, rectangles whose sides are multiples of the COG's block size (the last
ones end at the raster's edge), at full resolution and at every overview level. Each piece is compressed
where it was computed (a Dask worker) by :func:`encode_blocks`, with exactly the creation options of the
final COG (GDAL's GTiff driver in memory: same block size, DEFLATE level 1, pixel interleave, no predictor),
and its blocks' raw bytes are stored in a part file beside the output (:func:`write_part`). The assembler
(:func:`assemble_cog`) then writes the final file: header, GDAL's structural-metadata ghost area and image
directories, then every block, smallest overview first and full resolution last, row by row, each preceded
by its size as a 4-byte leader and followed by its last 4 bytes (what the ghost area promises GDAL's reader:
``BLOCK_LEADER=SIZE_AS_UINT4``, ``BLOCK_TRAILER=LAST_4_BYTES_REPEATED``). Its cost is byte copying, whatever
the raster's size, and it holds one block at a time.

The directories are GDAL's own: the COG driver writes them for a one-pixel-high raster with the same
georeferencing, tags, band descriptions, scales, colour table, nodata and number of overview levels
(:func:`cog_template`, which reads one row, not the raster); this module only sets each directory's width,
height and block offsets and counts (:func:`_layout`). GDAL cannot assemble a COG from pieces written by
several processes (its COG driver copies one source dataset, which it reads and compresses itself), so the
small TIFF directory reader and writer here do that part. Prior art: the COG specification
(https://docs.ogc.org/is/21-026/21-026.html, tile data after the directories, overviews first), GDAL's COG
driver documentation (https://gdal.org/drivers/raster/cog.html, the ghost area, block leaders and trailers)
and airbusgeo/cogger, which assembles COGs from existing GeoTIFFs by copying their tiles the same way.

A block's bytes depend only on its pixels and the creation options, so the product is the file GDAL's COG
driver makes from the same pixels, directories included (tests/pipeline/inference/test_assemble.py checks
that byte for byte against a COG copy).
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import MemoryFile

from pipeline.atomic import atomic_path, free_bytes, is_disk_full, temp_path_for
from pipeline.errors import DiskFullError, OutputError
from pipeline.inference.overviews import overview_factors
from pipeline.inference.raster import verify_raster

__all__ = ["CogSpec", "BlockKey", "BlockRef", "encode_blocks", "write_part", "cog_template", "assemble_cog",
           "tiff_blocks", "part_path", "remove_parts"]

# (overview level, block row, block column): level 0 is full resolution, level k is halved k times
BlockKey = tuple[int, int, int]
# where a block's compressed bytes are: (part file, offset, length), or the bytes themselves (workers that
# share no disk with the process that assembles: see workflows.scene.workers_share_disk)
BlockRef = tuple[str, int, int] | bytes
_K = TypeVar("_K")  # a block's key in a part file: a BlockKey, or one with the product's name in front

_TIFF_TYPES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_SHORT, _LONG, _LONG8 = 3, 4, 16
_WIDTH, _HEIGHT, _TILE_OFFSETS, _TILE_BYTE_COUNTS, _PLANAR = 256, 257, 324, 325, 284
# GDAL's BIGTIFF=IF_SAFER: BigTIFF once the uncompressed raster would pass 4 GB (as the COG driver decides)
_BIGTIFF_ABOVE = 4_200_000_000


@dataclass(frozen=True, slots=True)
class CogSpec:
    """Everything the final COG's directories say: grid, bands, nodata, descriptions, colours, tags, and how
    its overviews are resampled (``mode``, ``average`` or ``nearest``, as :func:`overviews.reduce2`)."""

    crs: CRS | None
    transform: Affine
    height: int
    width: int
    count: int
    dtype: str
    nodata: float | None
    resampling: str = "nearest"
    descriptions: tuple[str, ...] = ()
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None
    scales: tuple[float, ...] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    block_size: int = 512

    @property
    def factors(self) -> list[int]:
        """The overview factors (2, 4, ...), as many as GDAL's COG driver makes by default."""
        return overview_factors(self.height, self.width, self.block_size)

    def level_shape(self, level: int) -> tuple[int, int]:
        """(rows, cols) of overview ``level`` (0: full resolution); sizes round up, as GDAL's do."""
        f = 2**level
        return math.ceil(self.height / f), math.ceil(self.width / f)

    @property
    def bigtiff(self) -> bool:
        return self.height * self.width * self.count * np.dtype(self.dtype).itemsize > _BIGTIFF_ABOVE


def _creation(spec: CogSpec) -> dict[str, object]:
    """The GTiff creation options of the COG's blocks (what GDAL's COG driver passes for ours)."""
    return {"driver": "GTiff", "tiled": True, "blockxsize": spec.block_size, "blockysize": spec.block_size,
            "compress": "deflate", "zlevel": 1, "interleave": "pixel", "count": spec.count, "dtype": spec.dtype}


def encode_blocks(spec: CogSpec, array: np.ndarray) -> list[bytes]:
    """``(bands, rows, cols)`` compressed into blocks as the COG stores them, row-major. ``rows`` and
    ``cols`` are multiples of the block size except where the piece ends at the raster's edge (a partial
    edge block is padded by GDAL as it pads the COG's own)."""
    with MemoryFile() as mem:
        # georeferenced only to keep GDAL quiet: tags do not change a block's bytes
        with mem.open(**_creation(spec), height=array.shape[1], width=array.shape[2], crs=spec.crs,
                      transform=spec.transform) as dst:
            dst.write(array)
        return tiff_blocks(mem.read())


def write_part(path: Path, blocks: Mapping[_K, bytes], owner: str = "") -> dict[_K, BlockRef]:
    """Store compressed blocks in one part file; where each one is. ``path`` is removed if this fails, and
    the error names ``owner`` (what the part is of: a scene's COGs) rather than the part file."""
    refs: dict[_K, BlockRef] = {}
    offset = 0
    try:
        with open(path, "wb") as out:
            for key, data in blocks.items():
                out.write(data)
                refs[key] = (str(path), offset, len(data))
                offset += len(data)
    except BaseException as err:
        path.unlink(missing_ok=True)
        if isinstance(err, OSError):
            need = sum(len(d) for d in blocks.values())
            raise _write_error(path.with_name(owner or path.name), err, need, "writing a piece of its COGs") from err
        raise
    return refs


# --- TIFF directories -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    tag: int
    type: int
    count: int
    value: bytes  # count x size of type, little- or big-endian as the file
    at: int = -1  # where the value was stored in the file read, when not inside the entry


@dataclass(frozen=True, slots=True)
class _Tiff:
    order: str  # "<" or ">"
    big: bool
    ghost: bytes  # between the header and the first directory (GDAL's structural metadata)
    ifds: tuple[tuple[_Entry, ...], ...]

    def values(self, ifd: int, tag: int) -> list[int]:
        entry = next(e for e in self.ifds[ifd] if e.tag == tag)
        code = {3: "H", 4: "I", 16: "Q"}[entry.type]
        return list(struct.unpack(f"{self.order}{entry.count}{code}", entry.value))


def _read_tiff(buf: bytes) -> _Tiff:
    """The directories of a TIFF or BigTIFF held in memory (only what this module needs: the chain of IFDs)."""
    order = {b"II": "<", b"MM": ">"}[buf[:2]]
    magic = struct.unpack(f"{order}H", buf[2:4])[0]
    big = magic == 43
    if big:
        first = struct.unpack(f"{order}Q", buf[8:16])[0]
        header = 16
    else:
        first = struct.unpack(f"{order}I", buf[4:8])[0]
        header = 8
    ifds = []
    offset = first
    while offset:
        if big:
            n = struct.unpack(f"{order}Q", buf[offset:offset + 8])[0]
            pos, size, inline = offset + 8, 20, 8
        else:
            n = struct.unpack(f"{order}H", buf[offset:offset + 2])[0]
            pos, size, inline = offset + 2, 12, 4
        entries = []
        for i in range(n):
            raw = buf[pos + i * size:pos + (i + 1) * size]
            if big:
                tag, typ, count = struct.unpack(f"{order}HHQ", raw[:12])
                field_bytes = raw[12:20]
            else:
                tag, typ, count = struct.unpack(f"{order}HHI", raw[:8])
                field_bytes = raw[8:12]
            length = count * _TIFF_TYPES[typ]
            at = -1
            if length <= inline:
                value = field_bytes[:length]
            else:
                at = struct.unpack(f"{order}{'Q' if big else 'I'}", field_bytes)[0]
                value = buf[at:at + length]
            entries.append(_Entry(tag, typ, count, value, at))
        ifds.append(tuple(entries))
        end = pos + n * size
        offset = struct.unpack(f"{order}{'Q' if big else 'I'}", buf[end:end + inline])[0]
    return _Tiff(order, big, buf[header:first], tuple(ifds))


def tiff_blocks(buf: bytes) -> list[bytes]:
    """The raw (still compressed) blocks of a TIFF's first image, in its TileOffsets order."""
    tiff = _read_tiff(buf)
    offsets = tiff.values(0, _TILE_OFFSETS)
    counts = tiff.values(0, _TILE_BYTE_COUNTS)
    return [buf[o:o + c] for o, c in zip(offsets, counts, strict=True)]


def cog_template(spec: CogSpec) -> bytes:
    """A COG written by GDAL's COG driver for a one-row raster described as ``spec``, with as many overview
    levels: its directories carry every tag of the final file; :func:`_layout` resizes them."""
    levels = len(spec.factors)
    profile = {**_creation(spec), "height": 1, "width": 2**levels, "crs": spec.crs, "transform": spec.transform,
               "nodata": spec.nodata}
    with MemoryFile() as src_mem, MemoryFile() as cog_mem:
        with src_mem.open(**profile) as src:
            for i, text in enumerate(spec.descriptions, start=1):
                src.set_band_description(i, text)
            if spec.colormap:
                src.write_colormap(1, spec.colormap)
            if spec.scales is not None:
                src.scales = spec.scales
            if spec.tags:
                src.update_tags(**spec.tags)
        # as CogWriter.finish copies the staging raster (DEFLATE level 1, the block size, BigTIFF if safer)
        rasterio.shutil.copy(src_mem.name, cog_mem.name, driver="COG", compress="deflate", level=1,
                             blocksize=spec.block_size, bigtiff="yes" if spec.bigtiff else "no",
                             overview_resampling="nearest", overview_count=levels)
        return cog_mem.read()


def _layout(spec: CogSpec, template: _Tiff, counts: Sequence[Sequence[int]]) -> tuple[bytes, list[list[int]]]:
    """The header, ghost area and directories of the final file, and each block's data offset, for blocks
    of ``counts[level]`` bytes (row-major); the data follows the directories, coarsest level first.

    Laid out as GDAL lays out its COGs: each directory followed by its other values (in the template's
    order), then the block offset and size arrays of every directory, then the blocks."""
    order, big = template.order, template.big
    levels = len(spec.factors) + 1
    if len(template.ifds) != levels:
        raise ValueError(f"COG template: {len(template.ifds)} images instead of {levels}")
    if template.values(0, _PLANAR) != [1]:
        raise ValueError("COG template: not pixel-interleaved")
    head = 16 if big else 8
    word = "Q" if big else "I"
    entry_size, inline = (20, 8) if big else (12, 4)
    tiles = (_TILE_OFFSETS, _TILE_BYTE_COUNTS)

    sized = []  # each directory's entries, resized, block arrays zeroed for now
    for level, ifd in enumerate(template.ifds):
        rows, cols = spec.level_shape(level)
        n = len(counts[level])
        assert n == math.ceil(rows / spec.block_size) * math.ceil(cols / spec.block_size), (level, n)
        sized.append([_size_entry(e, order, rows, cols, n) for e in ifd])

    def table_size(entries: Sequence[_Entry]) -> int:
        return (8 if big else 2) + len(entries) * entry_size + inline

    def extras(entries: Sequence[_Entry], arrays: bool) -> list[_Entry]:
        chosen = [e for e in entries if len(e.value) > inline and (e.tag in tiles) == arrays]
        return sorted(chosen, key=lambda e: (e.at, e.tag))

    ifd_at, pos = [], head + len(template.ghost)
    for entries in sized:
        ifd_at.append(pos)
        pos += table_size(entries) + sum(_pad(len(e.value)) for e in extras(entries, False))
    arrays_at = pos
    data_start = pos + sum(_pad(len(e.value)) for entries in sized for e in extras(entries, True))
    offsets: list[list[int]] = [[] for _ in range(levels)]  # coarsest level first; leader + data + trailer
    pos = data_start
    for level in reversed(range(levels)):
        for count in counts[level]:
            offsets[level].append(pos + 4)
            pos += count + 8
    if not big and pos >= 2**32:
        raise OutputError(f"{pos / 2**30:.1f} GiB: more than a classic TIFF holds")
    final = [[_with_values(e, order, offsets[level] if e.tag == _TILE_OFFSETS else counts[level])
              if e.tag in tiles else e for e in entries] for level, entries in enumerate(sized)]
    where: dict[tuple[int, int], int] = {}  # (level, tag) -> value offset, for values outside the entries
    pos = arrays_at
    for level, entries in enumerate(final):
        at = ifd_at[level] + table_size(entries)
        for e in extras(entries, False):
            where[level, e.tag], at = at, at + _pad(len(e.value))
        for e in extras(entries, True):
            where[level, e.tag], pos = pos, pos + _pad(len(e.value))
    out = bytearray()
    out += (b"II" if order == "<" else b"MM") + struct.pack(f"{order}H", 43 if big else 42)
    out += struct.pack(f"{order}HHQ", 8, 0, ifd_at[0]) if big else struct.pack(f"{order}I", ifd_at[0])
    out += template.ghost
    for level, entries in enumerate(final):
        assert len(out) == ifd_at[level]
        out += struct.pack(f"{order}{'Q' if big else 'H'}", len(entries))
        for e in sorted(entries, key=lambda e: e.tag):
            out += struct.pack(f"{order}HH{word}", e.tag, e.type, e.count)
            if len(e.value) <= inline:
                out += e.value.ljust(inline, b"\0")
            else:
                out += struct.pack(f"{order}{word}", where[level, e.tag])
        out += struct.pack(f"{order}{word}", ifd_at[level + 1] if level + 1 < levels else 0)
        for e in extras(entries, False):
            out += e.value.ljust(_pad(len(e.value)), b"\0")
    for entries in final:
        for e in extras(entries, True):
            out += e.value.ljust(_pad(len(e.value)), b"\0")
    assert len(out) == data_start
    return bytes(out), offsets


def _pad(n: int) -> int:
    return n + (n & 1)  # values start on a word boundary


def _size_entry(entry: _Entry, order: str, rows: int, cols: int, blocks: int) -> _Entry:
    if entry.tag in (_WIDTH, _HEIGHT):
        value = cols if entry.tag == _WIDTH else rows
        typ = _SHORT if value < 2**16 else _LONG
        return _Entry(entry.tag, typ, 1, struct.pack(f"{order}{'H' if typ == _SHORT else 'I'}", value))
    if entry.tag in (_TILE_OFFSETS, _TILE_BYTE_COUNTS):
        return _Entry(entry.tag, entry.type, blocks, b"\0" * blocks * _TIFF_TYPES[entry.type])
    return entry


def _with_values(entry: _Entry, order: str, values: Sequence[int]) -> _Entry:
    code = {_LONG: "I", _LONG8: "Q"}[entry.type]
    return replace(entry, value=struct.pack(f"{order}{len(values)}{code}", *values))


def _block_keys(spec: CogSpec, level: int) -> Iterator[BlockKey]:
    rows, cols = spec.level_shape(level)
    for r in range(math.ceil(rows / spec.block_size)):
        for c in range(math.ceil(cols / spec.block_size)):
            yield level, r, c


def assemble_cog(spec: CogSpec, blocks: Mapping[BlockKey, BlockRef], path: Path) -> Path:
    """Write the COG at ``path`` (atomically: a temporary file beside it, checked, then renamed) from every
    block of every level, each found in a part file (:func:`write_part`). Part files are left to the caller."""
    levels = len(spec.factors) + 1
    keys = [list(_block_keys(spec, level)) for level in range(levels)]
    missing = [k for level in keys for k in level if k not in blocks]
    if missing:
        raise ValueError(f"output {path.name}: {len(missing)} blocks missing, first {missing[0]}")
    counts = [[_length(blocks[k]) for k in level] for level in keys]
    head, _ = _layout(spec, _read_tiff(cog_template(spec)), counts)
    need = len(head) + sum(sum(c) + 8 * len(c) for c in counts)
    try:
        with atomic_path(path) as tmp:  # the rename too can fail: a folder in the way, no permission
            with open(tmp, "wb") as out:
                out.write(head)
                _copy_blocks(out, [blocks[k] for level in reversed(keys) for k in level], head[:2] == b"II")
            problem = verify_raster(tmp, spec.height, spec.width, spec.count)
            if problem is not None:
                raise OSError(problem)
    except OSError as err:
        raise _write_error(path, err, need) from err
    return path


def _length(ref: BlockRef) -> int:
    return len(ref) if isinstance(ref, bytes) else ref[2]


def _copy_blocks(out: BinaryIO, refs: Sequence[BlockRef], little: bool) -> None:
    """Append blocks in the given order, each with its size before it and its last 4 bytes after it."""
    leader = struct.Struct("<I" if little else ">I")
    with contextlib.ExitStack() as stack:
        files: dict[str, BinaryIO] = {}
        for ref in refs:
            if isinstance(ref, bytes):
                out.write(leader.pack(len(ref)) + ref + ref[-4:])
                continue
            part, offset, length = ref
            src = files.get(part)
            if src is None:
                src = files[part] = stack.enter_context(open(part, "rb"))
            src.seek(offset)
            data = src.read(length)
            if len(data) != length:
                raise OSError(f"part file {Path(part).name}: cut short")
            out.write(leader.pack(length) + data + data[-4:])


def _write_error(path: Path, err: BaseException, need: int, doing: str = "assembling the COG") -> OutputError:
    """What a failed write means to the user: a full disk (said with the space it needed), or why not."""
    free = free_bytes(path.parent)
    if is_disk_full(err) or (free is not None and free < need + 2**20):
        return DiskFullError(f"output {path.name}: no space left in {path.parent} while {doing} "
                             f"(about {need / 2**20:.1f} MiB needed); free some space and run again")
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return OutputError(f"output {path.name}: cannot be written in {path.parent} while {doing} ({detail})")


def part_path(out_dir: Path, token: str, name: str) -> Path:
    """A new part file's path: beside the output, named by the run's ``token`` (so that the run finds its own
    when it fails) and as a temporary file of this process (so that a later run removes it if this process
    was killed: :func:`pipeline.atomic.sweep_stale_temps`)."""
    return temp_path_for(out_dir / f"{token}.{name}.part")


def remove_parts(out_dir: Path, token: str) -> None:
    """Remove the part files of the run ``token`` in ``out_dir``."""
    for part in out_dir.glob(f"{token}.*.part"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part)
