"""Chat templates: the built-in names, `auto`, and literal Jinja strings (no transformers needed).

The built-in templates are written for mergefast from the public descriptions of each prompt
format; they take the usual `messages` list and `add_generation_prompt`.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from ..io.model_files import load_json, model_file

log = logging.getLogger(__name__)

BUILTIN_TEMPLATES: dict[str, str] = {
    "alpaca": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' + message['content'] + eos_token + '\\n\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"
    ),
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
    "llama3": (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
        "+ message['content'] | trim + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}"
        "{% set system = namespace(text='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set system.text = message['content'] + '\\n\\n' %}"
        "{% elif message['role'] == 'user' %}{{ '[INST] ' + system.text + message['content'] + ' [/INST]' }}"
        "{% set system.text = '' %}"
        "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
        "{% endif %}"
        "{% endfor %}"
    ),
    "exaone": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ '[|system|]' + message['content'] + '[|endofturn|]\\n' }}"
        "{% elif message['role'] == 'user' %}{{ '[|user|]' + message['content'] + '\\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '[|assistant|]' + message['content'] + '[|endofturn|]\\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '[|assistant|]' }}{% endif %}"
    ),
}


def check_chat_template(value: str) -> str:
    """Validate a `chat_template` value (config time): `auto`, a built-in name or a literal."""
    if value == "auto" or value in BUILTIN_TEMPLATES:
        return value
    if len(value) < 20 or "{" not in value:
        names = ", ".join(BUILTIN_TEMPLATES)
        raise ValueError(
            f"chat_template {value!r} is neither `auto`, a built-in name ({names}) nor a Jinja "
            "template (a literal template has at least 20 characters and a `{`)"
        )
    return value


def _folder_template(folder: Path) -> str | None:
    """The chat template a model folder's tokenizer declares, or None (dict templates: `default`)."""
    jinja = model_file(folder, "chat_template.jinja")  # files leading outside the folder: ModelError
    if jinja is not None:
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json"):
        path = model_file(folder, name)
        if path is None:
            continue
        try:
            template = load_json(path).get("chat_template")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(template, list):  # [{name, template}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if isinstance(template, str) and template:
            return template
    return None


def resolve_chat_template(value: str | None, folders: list[Path]) -> str | None:
    """The template text to save: `auto` picks the most common one among `folders` (config order)."""
    if value is None:
        return None
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    if value != "auto":
        return value
    # Compared without surrounding whitespace, as mergekit does: one template saved as a .jinja
    # file (trailing newline) and in tokenizer_config.json (none) is one template.
    found = [t.strip() for t in (_folder_template(f) for f in folders) if t and t.strip()]
    if not found:
        log.warning("chat_template: auto: no input model has a chat template; the output has none")
        return None
    return Counter(found).most_common(1)[0][0]  # ties: the first seen in config order
