"""Output tokenizers and vocabulary alignment (mergekit 0.1.5 `tokenizer_source` / `tokenizer:`).

Importing this package never imports transformers: `build.py` imports it lazily, only when a
tokenizer must actually be built (union, explicit tokens, differing vocabularies, templates).
"""

from .permute import VocabMap, VocabPlanner, plan_vocab

__all__ = ["VocabMap", "VocabPlanner", "plan_vocab"]
