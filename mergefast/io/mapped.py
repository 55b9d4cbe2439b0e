"""Input tensors, or runs of their elements, mapped from the page cache instead of read into
buffers: the torch-free engine's inputs (host/staging.py).

A tensor read with `preadv` is copied into a destination that must be faulted in once: cheap
for small pooled buffers, which the pool reuses, but not for the whole tensors of TIES, DARE,
breadcrumbs, DELLA, SCE and arcee_fusion, whose largest (embeddings, lm_head: 4 x 64 MB for the
0.3B family) are asked for once or twice. On the 2-vCPU AMD EPYC VM (free page reporting) the
first touch of fresh anonymous memory costs ~1 ms per MB (320 MB: 0.33-0.39 s). A private
mapping of the file's pages, populated with MADV_POPULATE_READ in the reader thread, copies
nothing and faults nothing fresh. TIES of the 0.3B family, 4 alternated runs: system time
0.37-0.46 s against 0.77-0.98 s, wall 1.65-2.08 against 2.00-2.39 s. The elementwise methods'
parts (host/parts.py) are slices of mappings of a few parts each (host/staging.py `_mapped`). The
torch engine keeps `preadv` (staging/host.py; mapped, its TIES took 0.9x the time and 1.4x the
peak RSS, 0.85 against 0.61 GB, 4 alternated runs).

The mapping is private and writable (a kernel that wrote into an input would get its own
copy of the page; none does), unmapped when the HostArray's memoryview is dropped. A file
truncated while one of its tensors is being merged would raise SIGBUS in the kernel, as with
every mmap-based loader (safetensors, mergekit): the output is then left in its partial
folder, never renamed to OUT. A truncation before the tensor is mapped is the reader's
ModelError.
"""

from __future__ import annotations

import errno
import mmap
import os
import sys

from ..dtypes import ITEMSIZE
from ..errors import ModelError
from .host_array import HostArray, host_array
from .safetensors_header import TensorInfo

MAP_MIN_BYTES = 256 << 10  # smaller tensors: a pooled, cache-hot buffer beats 3 syscalls
# Linux 5.14 (Python 3.11 lacks the name); elsewhere the pages fault in on use
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)
_MAPS = hasattr(mmap, "MAP_PRIVATE") and hasattr(mmap.mmap, "madvise")


def mappable(info: TensorInfo) -> bool:
    """Whether the tensor is worth mapping and can be: large enough, its bytes aligned to
    its element size (the kernels assume natural alignment; pooled buffers are page-aligned)."""
    return _MAPS and info.nbytes >= MAP_MIN_BYTES and info.data_offsets[0] % ITEMSIZE[info.dtype_name] == 0


def map_tensor(fd: int, info: TensorInfo) -> HostArray | None:
    """The tensor `info` of the open file `fd` as a HostArray over a private mapping of its
    bytes, its pages populated now (in the calling thread); None where the filesystem cannot
    map it (some FUSE and network filesystems), which the caller then reads."""
    start = info.data_offsets[0]
    end = start + info.nbytes
    if os.fstat(fd).st_size < end:
        raise ModelError(
            f"{info.file}: tensor {info.name!r} ends past the end of the file (truncated?); re-download it"
        )
    first = start // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    try:
        m = mmap.mmap(fd, end - first, flags=mmap.MAP_PRIVATE, prot=prot, offset=first)
    except OSError:  # ENODEV, EACCES: no private mapping of this file
        return None
    try:
        m.madvise(mmap.MADV_WILLNEED)  # pages not in the page cache: one readahead of the range
        if _MADV_POPULATE_READ is not None:
            m.madvise(_MADV_POPULATE_READ)
    except OSError as e:  # EINVAL: a kernel before 5.14, whose pages then fault in on use
        if e.errno != errno.EINVAL:
            m.close()
            raise ModelError(f"{info.file}: mapping tensor {info.name!r} failed ({e.strerror}); check the disk") from e
    return host_array(memoryview(m)[start - first :], info.dtype_name, info.shape)
