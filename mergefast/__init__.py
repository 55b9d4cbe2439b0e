"""mergefast: fast, mergekit-compatible merging of pre-trained language models.

Importing this package never initialises CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

# The merge thread's OpenMP workers share the cores with the reader and writer threads; with
# the default spin-waiting they burn the cores those threads need. Measured on a 2-vCPU AMD EPYC VM
# (0.3B Llama family, linear of 3): 8.4 s with spinning, 4.7 s passive; TIES 9.1 s passive.
# Only effective when set before torch (and its OpenMP runtime) is loaded, as the CLI does.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def load_config(path_or_text):
    """Parse and validate a mergekit YAML config (a path or YAML text); returns MergeConfig."""
    from .config import load_config as _load

    return _load(path_or_text)[0]


def merge(config_or_path, out_path: str | Path, *, dry_run: bool = False, **options):
    """Run a merge from a config (path, YAML text, a dict of it or MergeConfig) into the
    folder `out_path`.

    `options` are named like the `mergefast yaml` flags with underscores (`cuda=True`,
    `out_shard_size="1B"`, `copy_tokenizer=False`, ...). Returns the run's RunSummary
    (bytes moved, busy seconds per stage, wall time, peak RSS, kernel backends); with
    `dry_run=True` nothing is read but headers and nothing is written, and the plan's text
    (what `mergefast plan` prints) is returned instead. Options, OUT and the device are
    checked, as the command line checks them, before any model is opened.
    """
    from .run import run

    return run(config_or_path, out_path, options, dry_run=dry_run)
