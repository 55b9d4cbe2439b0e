"""The magnitude selection of task arithmetic / TIES on the GPU: per model, exactly its k
largest |x - base|, ties at the threshold kept lowest flat index first (the reference's kept
set), with no sort and no K x N temporaries. The same scheme, file for file, as the CPU's
`csrc/cpu/select/` (its README.md).

Keys. A delta's key is its float32 bits with the sign cleared (integer order = magnitude
order; every NaN one key above inf: utils.magnitude_key). Without a base (base None: the
two passes only) the inputs' own values are ranked: SCE's variances (kernels/triton/sce.py).
A model's keep rule is a threshold key T, a quota of T-valued keys to keep, and per block the
T-valued keys before it, so a block keeps its ties in flat order (apply.keep_mask).

Exact histogram top-k. T is found by counting, never by sorting: a radix select over the keys,
one histogram pass per digit (histogram.py).

Windows. A stratified sample of each model's keys predicts an interval (lo, hi) around T;
one pass counts the keys above hi, equal to hi and to lo, and packs the keys strictly inside,
the candidates (a few % of the keys), into per-block slots (window.py). T is then hi, lo, or
found among the candidates alone by a radix select on the device (candidates.py). A window
that misses T, or slots that overflow, leave that model to the histogram passes.

Two passes (two_pass.py, then `task_arithmetic._task_arithmetic_kernel`): the selection reads
the inputs once, the apply a second time.

One read (one_read.py), tried first from 2^20 elements: one pass applies every model with
"keep key > hi" and, in the same read, counts the window and records every element whose key
lies in some window [lo, hi] (records.py: its offset and every input's value there). T comes
from the counts and the recorded keys; the fix-up (fix_up.py) recomputes the records with the
exact rules by the apply's own arithmetic, so the result is the two-pass scheme's bit for bit.
When a window misses or the records overflow, the two passes run.

Both schemes end in rules.py, which turns where each T lies into thresholds, quotas and
per-block tie counts on the device. The choices (one read or not, window or histogram passes,
how candidates are ranked, block and grid sizes) come as a `SelectionOptions`
(mergefast/kernels/selection.py) argument, never from module state.

| role       | here           | CPU (csrc/cpu/select/)      |
|------------|----------------|-----------------------------|
| rules      | rules.py       | rules.h, rules.cpp          |
| window     | window.py      | window.h, window.cpp        |
| candidates | candidates.py  | candidates.h, candidates.cpp|
| histogram  | histogram.py   | histogram.h, histogram.cpp  |
| two passes | two_pass.py    | two_pass.h, two_pass.cpp    |
| one read   | one_read.py    | one_read.h, one_read.cpp    |
| records    | records.py     | records.h, records.cpp      |
| fix-up     | fix_up.py      | fix_up.h, fix_up.cpp        |
"""

from .one_read import task_arithmetic as one_read_task_arithmetic
from .two_pass import select_magnitude

__all__ = ["one_read_task_arithmetic", "select_magnitude"]
