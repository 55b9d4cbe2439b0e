"""Output tokenizers and vocabulary alignment (mergekit 0.1.5 `tokenizer_source` / `tokenizer:`).

Importing this package never imports transformers: `build.py` imports it lazily, only when a
tokenizer must actually be built (union, explicit tokens, differing vocabularies, templates).

Modules, top to bottom (each imports only those below it, see `.importlinter`): `vocab.py`
picks the mode, `build.py` builds the tokenizer, `permute.py` maps rows; `templates.py`
(chat templates) stands apart, low enough for the config schema to validate with it.
"""

from .permute import VocabMap, VocabPlanner
from .vocab import plan_vocab

__all__ = ["VocabMap", "VocabPlanner", "plan_vocab"]
