"""The README.md model card written next to a merged model.

The card has YAML front matter the Hugging Face Hub understands (``base_model``,
``library_name``, ``tags``), a short description naming the merge method and its
reference, the list of merged models, and the configuration text exactly as given.

Whether a model reference is a Hugging Face repo id is decided from the string alone
(``org/name`` shape, and not an existing local path). No network call is ever made, so
writing the card cannot fail offline after the weights have been written.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

__all__ = [
    "MERGE_METHODS",
    "model_card",
    "write_model_card",
    "looks_like_hf_repo",
    "split_model_reference",
]

MERGEFAST_URL = "https://github.com/mergefast/mergefast"

# method name -> (display name, reference URL or None)
MERGE_METHODS: dict[str, tuple[str, str | None]] = {
    "linear": ("Linear", "https://arxiv.org/abs/2203.05482"),
    "slerp": ("SLERP", "https://en.wikipedia.org/wiki/Slerp"),
    "nuslerp": ("NuSLERP", "https://en.wikipedia.org/wiki/Slerp"),
    "multislerp": ("Multi-SLERP", "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea"),
    "karcher": ("Karcher Mean", "https://arxiv.org/abs/2603.04972"),
    "passthrough": ("Passthrough", None),
    "task_arithmetic": ("Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
    "ties": ("TIES", "https://arxiv.org/abs/2306.01708"),
    "dare_ties": ("DARE TIES", "https://arxiv.org/abs/2311.03099"),
    "dare_linear": ("DARE (linear)", "https://arxiv.org/abs/2311.03099"),
    "breadcrumbs": ("Model Breadcrumbs", "https://arxiv.org/abs/2312.06795"),
    "breadcrumbs_ties": ("Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795"),
    "della": ("DELLA", "https://arxiv.org/abs/2406.11617"),
    "della_linear": ("DELLA (linear)", "https://arxiv.org/abs/2406.11617"),
    "sce": ("SCE", "https://arxiv.org/abs/2408.07990"),
    "ram": ("RAM (Reinforced Agent Merging)", "https://arxiv.org/abs/2601.13572"),
    "ramplus_tl": ("RAM+ (Reinforced Agent Merging)", "https://arxiv.org/abs/2601.13572"),
    "nearswap": ("NearSwap", "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001"),
    "model_stock": ("Model Stock", "https://arxiv.org/abs/2403.19522"),
    "arcee_fusion": ("Arcee Fusion", "https://arcee.ai"),
}

# Methods whose base model is one of the two interpolated models rather than a reference
# point; the card lists it among the merged models instead of calling it "the base".
_BASE_IS_ORDINARY_INPUT = frozenset({"slerp"})

# A Hugging Face repo id: "owner/name", each part letters, digits, '-', '_', '.'.
_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?"
_HF_ID = re.compile(rf"^{_HF_PART}/{_HF_PART}$")


def split_model_reference(ref: str) -> tuple[str, str | None]:
    """``"model@rev+lora@rev"`` -> ``("model", "lora")`` with revisions dropped."""
    model, _, lora = ref.partition("+")
    model = model.split("@", 1)[0].strip()
    lora_path = lora.split("@", 1)[0].strip() if lora else None
    return model, lora_path or None


def looks_like_hf_repo(path: str) -> bool:
    """True when ``path`` (without ``@revision``) has the ``org/name`` shape of a Hugging Face
    repo id and is not an existing local path. Never touches the network."""
    path = path.split("@", 1)[0].strip()
    if not _HF_ID.match(path) or ".." in path:
        return False
    return not os.path.exists(path)


def _link(path: str) -> str:
    if looks_like_hf_repo(path):
        return f"[{path}](https://huggingface.co/{path})"
    return path


def _display(ref: str) -> str:
    model, lora = split_model_reference(ref)
    return _link(model) + (f" + {_link(lora)}" if lora else "")


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def _fence(text: str) -> str:
    """A backtick fence longer than any backtick run inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def model_card(
    config_text: str,
    *,
    method: str,
    base_model: str | None,
    models: list[str],
    out_name: str,
) -> str:
    """Return the README.md text for a merged model.

    ``config_text`` is the YAML configuration exactly as the user wrote it; ``models`` are the
    input model references in config order (the base may or may not be among them);
    ``out_name`` is the title (usually the output folder's name).
    """
    refs = _dedupe([m for m in models if m])
    if base_model and method in _BASE_IS_ORDINARY_INPUT:
        merged = _dedupe([base_model, *refs])
        base_phrase = ""
    else:
        merged = [m for m in refs if m != base_model]
        base_phrase = f" using {_display(base_model)} as a base" if base_model else ""

    hub_ids = []
    for ref in ([base_model] if base_model else []) + refs:
        model, _ = split_model_reference(ref)
        if looks_like_hf_repo(model):
            hub_ids.append(model)
    metadata: dict[str, object] = {
        "library_name": "transformers",
        "tags": ["merge", "mergefast"],
    }
    if hub_ids:
        metadata["base_model"] = _dedupe(hub_ids)
    front = yaml.safe_dump(metadata, sort_keys=True, default_flow_style=False, allow_unicode=True)

    pretty, url = MERGE_METHODS.get(method, (method, None))
    method_md = f"[{pretty}]({url})" if url else pretty

    lines = [
        "---",
        front.rstrip("\n"),
        "---",
        f"# {out_name}",
        "",
        f"This model is a merge of pre-trained language models, made with [mergefast]({MERGEFAST_URL}).",
        "",
        "## Merge Details",
        "### Merge Method",
        "",
        f"The models were combined with the {method_md} merge method{base_phrase}.",
        "",
        "### Models Merged",
        "",
    ]
    if merged:
        lines.append("These models went into the merge:")
        lines.append("")
        lines.extend(f"* {_display(m)}" for m in merged)
    else:
        lines.append("No models other than the base went into the merge.")
    body = config_text if config_text.endswith("\n") or not config_text else config_text + "\n"
    fence = _fence(config_text)
    lines += [
        "",
        "### Configuration",
        "",
        "The merge was produced from this YAML configuration:",
        "",
        f"{fence}yaml",
    ]
    return "\n".join(lines) + "\n" + body + fence + "\n"


def write_model_card(
    out_path: str | os.PathLike,
    config_text: str,
    *,
    method: str,
    base_model: str | None,
    models: list[str],
) -> None:
    """Write ``README.md`` (the card) and ``mergekit_config.yml`` (the config text) into
    ``out_path``, as mergekit does, so tools that look for either file find it."""
    out = Path(out_path)
    out.mkdir(parents=True, exist_ok=True)
    card = model_card(
        config_text,
        method=method,
        base_model=base_model,
        models=models,
        out_name=out.resolve().name,
    )
    (out / "README.md").write_text(card, encoding="utf-8")
    (out / "mergekit_config.yml").write_text(config_text, encoding="utf-8")
