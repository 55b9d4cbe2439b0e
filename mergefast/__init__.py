"""mergefast: fast, mergekit-compatible merging of pre-trained language models.

Importing this package never initialises CUDA.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"


def load_config(path_or_text):
    """Parse and validate a mergekit YAML config (a path or YAML text); returns MergeConfig."""
    from .config import load_config as _load

    return _load(path_or_text)[0]


def merge(config_or_path, out_path: str | Path, **options):
    """Run a merge from a config (path, YAML text or MergeConfig) into the folder `out_path`.

    `options` are named like the `mergefast yaml` flags with underscores (`cuda=True`,
    `out_shard_size="1B"`, `copy_tokenizer=False`, ...). Returns the run's MergeStats.
    """
    from .config import load_config as _load
    from .execute import execute
    from .options import MergeOptions
    from .plan import build_plan

    opts = MergeOptions.from_kwargs(**options)
    config, text, source = _load(config_or_path)
    plan = build_plan(config, text, source, opts)
    try:
        return execute(plan, out_path, opts)
    finally:
        plan.close()
