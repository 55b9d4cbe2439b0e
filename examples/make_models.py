#!/usr/bin/env python3
"""Write tiny Llama-shaped checkpoints for examples and tests.

Standalone: needs only torch, safetensors and the standard library (no transformers).

    python examples/make_models.py            # writes examples/models/{base,ft-a,ft-b,ft-c}
    python examples/make_models.py OUT_DIR    # writes the same four models under OUT_DIR

Importable:

    from make_models import make_tiny_llama
    base = make_tiny_llama(tmp / "base", seed=0)
    make_tiny_llama(tmp / "ft", seed=1, base=base)   # fine-tune = base + noise

Every model is deterministic in its arguments. Tensors follow the Hugging Face Llama
layout (``model.embed_tokens.weight``, ``model.layers.N.self_attn.q_proj.weight``, ...,
``model.norm.weight``, ``lm_head.weight`` unless tied), and each folder gets a small
word-level tokenizer (``tokenizer.json`` written by hand, ``tokenizer_config.json``,
``special_tokens_map.json``) so that tokenizer copying can be tested.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

__all__ = ["make_tiny_llama", "llama_tensor_shapes", "write_tokenizer", "main"]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3

_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float64: "float64",
}


def llama_tensor_shapes(
    *,
    layers: int,
    vocab: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    tie_word_embeddings: bool,
) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, in architecture order (embeddings, layers, norm, head)."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "self_attn.q_proj.weight"] = (hidden, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, hidden)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
        shapes[p + "mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[p + "mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, intermediate)
    shapes["model.norm.weight"] = (hidden,)
    if not tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _init_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A fresh float32 tensor: norms near 1, matrices ~ N(0, 1/fan_in)."""
    if len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float32)
    std = 1.0 / math.sqrt(shape[1]) if "embed_tokens" not in name else 0.5
    return std * torch.randn(shape, generator=gen, dtype=torch.float32)


def _config_dict(
    *,
    layers: int,
    vocab: int,
    hidden: int,
    intermediate: int,
    heads: int,
    kv_heads: int,
    dtype: torch.dtype,
    tie_word_embeddings: bool,
) -> dict:
    dtype_name = _DTYPE_NAMES[dtype]
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "hidden_act": "silu",
        "max_position_embeddings": 256,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


def write_tokenizer(folder: str | os.PathLike, vocab: int) -> None:
    """A word-level tokenizer with exactly ``vocab`` tokens (4 special + words)."""
    if vocab < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab must be at least {len(SPECIAL_TOKENS) + 1}")
    folder = Path(folder)
    words = [f"w{i}" for i in range(vocab - len(SPECIAL_TOKENS))]
    tokens = SPECIAL_TOKENS + words
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(SPECIAL_TOKENS)
    ]
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "unk_token": "<unk>",
        },
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, indent=2) + "\n")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "model_max_length": 256,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def _write_tensors(folder: Path, tensors: dict[str, torch.Tensor], fmt: str) -> None:
    if fmt == "safetensors":
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif fmt == "sharded":
        names = list(tensors)
        half = (len(names) + 1) // 2
        parts = [names[:half], names[half:]]
        weight_map: dict[str, str] = {}
        for i, part in enumerate(parts, start=1):
            fname = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
            save_file({n: tensors[n] for n in part}, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    elif fmt == "bin":
        torch.save(dict(tensors), folder / "pytorch_model.bin")
    else:
        raise ValueError(f"fmt must be 'safetensors', 'sharded' or 'bin', not {fmt!r}")


def make_tiny_llama(
    folder: str | os.PathLike,
    *,
    seed: int,
    base: dict[str, torch.Tensor] | None = None,
    noise: float = 0.02,
    layers: int = 4,
    vocab: int = 128,
    hidden: int = 32,
    intermediate: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    dtype: torch.dtype = torch.bfloat16,
    tie_word_embeddings: bool = False,
    fmt: str = "safetensors",
) -> dict[str, torch.Tensor]:
    """Write a tiny Llama checkpoint into ``folder`` and return its tensors (name -> tensor).

    Without ``base`` every tensor is drawn from a generator seeded with ``seed``. With
    ``base`` (a dict as returned by an earlier call) each tensor is ``base + noise * N(0, 1)``
    computed in float32 and rounded once to ``dtype``; tensors missing from ``base`` (e.g.
    ``lm_head.weight`` when the base was tied) are drawn fresh.
    """
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = dict(
        layers=layers,
        vocab=vocab,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=kv_heads,
        tie_word_embeddings=tie_word_embeddings,
    )
    shapes = llama_tensor_shapes(**arch)
    gen = torch.Generator().manual_seed(int(seed))
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        if base is not None and name in base:
            ref = base[name]
            if tuple(ref.shape) != shape:
                raise ValueError(f"{name}: base has shape {tuple(ref.shape)}, expected {shape}")
            value = ref.float() + noise * torch.randn(shape, generator=gen, dtype=torch.float32)
        else:
            value = _init_tensor(name, shape, gen)
        tensors[name] = value.to(dtype).contiguous()
    _write_tensors(folder, tensors, fmt)
    config = _config_dict(**arch, dtype=dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    write_tokenizer(folder, vocab)
    return tensors


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path(__file__).resolve().parent / "models"
    base = make_tiny_llama(out / "base", seed=0)
    for i, name in enumerate(["ft-a", "ft-b", "ft-c"], start=1):
        make_tiny_llama(out / name, seed=i, base=base)
    print(f"wrote base, ft-a, ft-b, ft-c under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
