"""mergekit's older command lines: `mergefast-legacy` (mergekit-legacy's flags) and `bakllama`.

Both turn their input into an ordinary mergefast config and merge it like `mergefast yaml`:
- `legacy/mergekit_legacy.py`: `mergefast-legacy OUT --merge M ... --base-model B`, the
  `models:` config mergekit-legacy 0.1.5 builds from those flags;
- `legacy/bakllama.py`: `bakllama CONFIG OUT`, layer stacking as `passthrough` `slices:`;
- `legacy/loose_weights.py`: bakllama's embedding/lm_head sources (`take_loose_weights`).
Both end in `cli_support.run_command`, the run of every merge command.
This package re-exports their public names.
"""

from .bakllama import bakllama_command, bakllama_yaml, read_bakllama
from .loose_weights import take_loose_weights
from .mergekit_legacy import LEGACY_SOURCE, drop_unread_keys, dump_yaml, legacy_command, legacy_config

__all__ = [
    "LEGACY_SOURCE",
    "bakllama_command",
    "bakllama_yaml",
    "drop_unread_keys",
    "dump_yaml",
    "legacy_command",
    "legacy_config",
    "read_bakllama",
    "take_loose_weights",
]
