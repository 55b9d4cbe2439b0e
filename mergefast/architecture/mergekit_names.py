"""The tensor names mergekit 0.1.5 matches parameter filters against, for checkpoints whose
stored names differ from them.

mergekit names every tensor by its architecture definition, not by the checkpoint: for the
mixture-of-experts families below that is transformers 5's layout, where each layer's
experts are one fused tensor (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`; Mixtral's
`block_sparse_moe` is `mlp`), and for GPT-2 the `transformer.`-prefixed names of
`GPT2LMHeadModel` (the Hub's original checkpoints store `h.0...`, `wte`, `ln_f`). A filter
such as `mlp` or `up_proj` therefore picks different tensors in the two layouts. mergefast
keeps the stored layout (one tensor per expert) and matches filters against the name
mergekit gives that tensor: expert e's `w1` and `w3` of a Mixtral layer both take the value
mergekit gives the fused `mlp.experts.gate_up_proj`.

The rules are the renames of transformers 5.25's checkpoint conversion mapping for these
model types (tests/test_mergekit_names.py compares them with it) and mergekit's GPT-2
aliases. A checkpoint already in the target layout is left as it is.
"""

from __future__ import annotations

import re

_Rules = tuple[tuple[re.Pattern[str], str], ...]


def _rules(*pairs: tuple[str, str]) -> _Rules:
    return tuple((re.compile(pattern), target) for pattern, target in pairs)


def _fused_experts(stack: str, gate: str, up: str, down: str) -> tuple[tuple[str, str], ...]:
    """Per-expert weights of `stack` (e.g. `mlp.experts`) named as the fused pair."""
    s = re.escape(stack)
    return (
        (rf"{s}\.\d+\.(?:{gate}|{up})\.weight", f"{stack}.gate_up_proj"),
        (rf"{s}\.\d+\.{down}\.weight", f"{stack}.down_proj"),
    )


_MIXTRAL = _rules((r"\.block_sparse_moe\.", ".mlp."), *_fused_experts(".experts", "w1", "w3", "w2"))
_PHIMOE = _rules(
    (r"\.block_sparse_moe\.", ".mlp."),
    (r"\.gate\.weight", ".router.weight"),
    *_fused_experts(".experts", "w1", "w3", "w2"),
)
_QWEN_MOE = _rules(*_fused_experts("mlp.experts", "gate_proj", "up_proj", "down_proj"))
_ERNIE_MOE = _rules(
    *_fused_experts("mlp.experts", "gate_proj", "up_proj", "down_proj"),
    (r"mlp\.moe_statics\.e_score_correction_bias", "mlp.gate.moe_statics.e_score_correction_bias"),
)
_GRANITE_MOE = _rules(
    (r"block_sparse_moe\.input_linear\.weight", "block_sparse_moe.experts.gate_up_proj"),
    (r"block_sparse_moe\.output_linear\.weight", "block_sparse_moe.experts.down_proj"),
    (r"block_sparse_moe\.router\.layer\.weight", "block_sparse_moe.router.weight"),
)
_GPT2 = _rules((r"^(?!transformer\.|lm_head\.)", "transformer."))

RULES: dict[str, _Rules] = {
    "mixtral": _MIXTRAL,
    "minimax": _MIXTRAL,
    "phimoe": _PHIMOE,
    **dict.fromkeys(
        (
            "qwen2_moe",
            "qwen3_moe",
            "olmoe",
            "deepseek_v2",
            "deepseek_v3",
            "glm4_moe",
            "hunyuan_v1_moe",
            "flex_olmo",
            "qwen3_next",
        ),
        _QWEN_MOE,
    ),
    "ernie4_5_moe": _ERNIE_MOE,
    "jamba": _rules(*_fused_experts("feed_forward.experts", "gate_proj", "up_proj", "down_proj")),
    "lfm2_moe": _rules(*_fused_experts("feed_forward.experts", "w1", "w3", "w2")),
    "granitemoe": _GRANITE_MOE,
    "gpt2": _GPT2,
}


def mergekit_name(model_type: object, name: str) -> str:
    """The name mergekit 0.1.5 gives the stored tensor `name` of a `model_type` checkpoint
    (its parameter filters match against it); `name` itself for other model types."""
    for pattern, target in RULES.get(model_type, ()) if isinstance(model_type, str) else ():
        name = pattern.sub(target, name, count=1)
    return name
