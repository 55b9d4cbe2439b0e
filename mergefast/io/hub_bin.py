"""The metadata of a Hub repo's PyTorch `.bin` weight file, read over HTTP without its tensor data.

A `.bin` that torch.save wrote (torch 1.6 and later) is an uncompressed zip: `<dir>/data.pkl`
(the pickle of the state dict: names, dtypes, shapes and one key per storage), a few small
records (`byteorder`, `version`, ...), one `<dir>/data/<key>` record per storage, then the
zip's central directory. `bin_metadata` reads the central directory (at the end of the file)
and every record but the storages (data.pkl comes first, so one range request holds it and
the small records beside it) through a file object whose reads are HTTP range requests, and
writes them into a small zip of the same names whose storage records are empty.
io/torch_bin.py's `load_bin_metadata` loads that zip with weights_only=True onto the meta
device: the tensors' names, dtypes and shapes, no storage read. The 291 tensors of a 7B Llama
make a 35 kB pickle and an 18 kB zip directory: a few requests and under 100 kB a file, however
large. Torch-free: it runs in io/hub_prefetch.py's threads.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable

from ..errors import ModelError

BLOCK = 16 << 10  # bytes per range request, at least: a span of missing blocks is one request
MAX_METADATA = 64 << 20  # bytes read of one file, at most (a 70B model's pickle: ~1 MB)


class _RangeFile(io.RawIOBase):
    """A read-only, seekable file of `size` bytes whose reads are `fetch(start, end)` calls,
    made one aligned span of blocks at a time and kept."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, where: str):
        self._fetch, self._size, self._where = fetch, size, where
        self._pos = self._fetched = 0
        self._blocks: dict[int, bytes] = {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        if n:
            buffer[:n] = self._span(self._pos, self._pos + n)
            self._pos += n
        return n

    def _span(self, start: int, end: int) -> bytes:
        first, last = start // BLOCK, (end - 1) // BLOCK
        missing = [i for i in range(first, last + 1) if i not in self._blocks]
        if missing:
            lo, hi = missing[0] * BLOCK, min(self._size, (missing[-1] + 1) * BLOCK)
            self._fetched += hi - lo
            if self._fetched > MAX_METADATA:  # a hostile directory or pickle must not be a download
                raise ModelError(
                    f"{self._where}: its zip directory and the records besides the tensors pass "
                    f"{MAX_METADATA >> 20} MB; not a checkpoint mergefast plans from the Hub: convert "
                    "the repo to safetensors"
                )
            data = self._fetch(lo, hi)
            if len(data) != hi - lo:
                raise ModelError(f"{self._where}: the Hub sent {len(data)} of bytes {lo}-{hi - 1}; retry later")
            for i in range(missing[0], missing[-1] + 1):
                self._blocks[i] = data[(i - missing[0]) * BLOCK : (i - missing[0] + 1) * BLOCK]
        joined = b"".join(self._blocks[i] for i in range(first, last + 1))
        return joined[start - first * BLOCK : end - first * BLOCK]


def _is_storage(name: str) -> bool:
    """Whether zip member `name` is a tensor storage (`<dir>/data/<key>`)."""
    return name.partition("/")[2].startswith("data/")


def bin_metadata(fetch: Callable[[int, int], bytes], size: int, where: str) -> bytes:
    """A zip of the `.bin` file's records with its storages left empty (see the module
    docstring), read through `fetch(start, end)` (bytes [start, end) of the file). `where`
    names the file in errors."""
    try:
        with zipfile.ZipFile(_RangeFile(fetch, size, where)) as src:
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
                for m in src.infolist():
                    dst.writestr(m.filename, b"" if _is_storage(m.filename) else src.read(m))
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        EOFError,
        ValueError,
        struct.error,
    ) as e:
        raise ModelError(
            f"{where}: not a zip-format PyTorch checkpoint ({e}); mergefast reads .bin files that "
            "torch.save wrote since torch 1.6: convert the repo to safetensors"
        ) from None
    return out.getvalue()
