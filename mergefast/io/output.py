"""The non-tensor files of an output folder: config.json, tokenizer, model card, config copy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..architecture.layout import LayerSource
from ..architecture.rewrite import rewrite_module_layers, with_derived_lists
from ..errors import ConfigError, ModelError
from .model_files import TOKENIZER_FILES, model_file, read_model_object  # noqa: F401 - TOKENIZER_FILES re-exported

log = logging.getLogger(__name__)


def output_model_config(
    donor_config: dict, dtype_name: str | None, vocab_size: int | None = None, untie: bool = False, rewrites=()
) -> dict:
    """The donor's config.json with the output dtype set and each sliced module's layers rewritten.

    `vocab_size`: the output vocabulary (padded), when a tokenizer was built or rows truncated.
    `untie`: the output holds a head that is tied in the donor (inputs mixing tied and untied
    models: the head is merged with tied models' embeddings), so tie_word_embeddings is false.
    `rewrites`: (Module, per-output-layer sources, where) of each sliced module
    (architecture.rewrite)."""
    config = json.loads(json.dumps(donor_config))
    config.pop("quantization_config", None)  # the output is never quantized (FP8 inputs are dequantized)
    if vocab_size is not None:
        text = config.get("text_config")
        holder = text if isinstance(text, dict) and "vocab_size" in text and "vocab_size" not in config else config
        holder["vocab_size"] = vocab_size
    if untie:
        if config.get("tie_word_embeddings") is not False:
            config["tie_word_embeddings"] = False
        text = config.get("text_config")
        if isinstance(text, dict) and text.get("tie_word_embeddings"):
            text["tie_word_embeddings"] = False
    if dtype_name:
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype"]
        for key in keys:
            config[key] = dtype_name
    for module, layers, where in rewrites:
        rewrite_module_layers(config, module, layers, where)
    return config


def plan_output_config(plan) -> dict:
    """The output config.json of `plan`, built at plan time so that a config that cannot be
    written (no layer count key, a per-layer list a source lacks) fails before any tensor is read."""
    donor = plan.models[plan.donor]
    where = f"{plan.source}: the donor's config {donor.folder / 'config.json'}"
    if not isinstance(donor.config.get("model_type"), str) or not donor.config["model_type"]:
        # transformers' AutoConfig finds a config class by model_type only
        raise ModelError(
            f"{where} has no model_type, and the donor's config becomes the output's: transformers "
            "could not load the output; add the model's model_type to config.json (or make another "
            "model the base_model)"
        )
    rewrites, configs = [], {}  # configs: model -> its config with derived lists, made once
    for module_plan in plan.modules:
        if module_plan.how != "slices" or module_plan.num_layers == 0:
            continue  # the same layers as the donor's, or a module without layers (a projector)
        module = donor.arch.module(module_plan.name)
        if module is None:
            raise ConfigError(
                f"{where}: the donor {plan.donor} has no {module_plan.name} module to describe "
                "the sliced one; make a model that has it the base_model"
            )
        layers = []
        for ref, layer in module_plan.layer_sources(plan.donor):
            model = plan.models[ref]
            if ref not in configs:
                configs[ref] = with_derived_lists(model.config)
            layers.append(LayerSource(configs[ref], model.arch.module(module_plan.name), layer, _where(plan, ref)))
        rewrites.append((module, layers, where))
    untie = any(job.name in donor.arch.tied_heads for job in plan.jobs)
    vocab = plan.vocab.output_vocab_size if plan.vocab is not None else None
    config = with_derived_lists(donor.config) if rewrites else donor.config
    return output_model_config(config, plan.config.out_dtype or plan.config.dtype, vocab, untie, rewrites)


def _where(plan, ref: str) -> str:
    """Where model `ref`'s config.json is, for errors: its path (and the Hub repo it came from)."""
    path = str(plan.models[ref].folder / "config.json")
    return f"{plan.source}: {path}" if path.startswith(str(ref)) else f"{plan.source}: {ref}'s config {path}"


def write_json(path: Path, data: dict) -> None:
    """Write `data` as indented JSON, the way transformers writes config.json."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def copy_tokenizer(donor: Path, out: Path) -> list[str]:
    """Copy the donor's tokenizer files into `out`; return the names copied. Each must stay
    inside the donor's folder (model_files.model_file): a link to a file elsewhere would put
    that file into OUT, to be uploaded with the model."""
    sources = {name: model_file(donor, name) for name in TOKENIZER_FILES}  # all checked before any copy
    copied = []
    for name, src in sources.items():
        if src is not None:
            shutil.copyfile(src, out / name)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")):
        log.warning(
            "%s has no tokenizer vocabulary (tokenizer.json, tokenizer.model, vocab.json or vocab.txt)%s; "
            "the output's tokenizer will not load",
            donor,
            f": copied only {', '.join(copied)}" if copied else "",
        )
    return copied


def tokenizer_copy_source(plan, options) -> Path | None:
    """The model folder whose tokenizer files the output copies; None when a tokenizer is built
    (a tokenizer config) or none is written (--no-copy-tokenizer)."""
    if getattr(plan.vocab, "built", None) is not None or not options.copy_tokenizer:
        return None
    source = plan.config.tokenizer_choice()
    return plan.models[plan.donor if source in (None, "base", "union") else source].folder


def check_copied_tokenizer(folder: Path) -> None:
    """Before the merge: every JSON tokenizer file the output copies from `folder` is a JSON
    object (ModelError naming it): copied as it is, a corrupt one breaks the output's tokenizer.
    Llama 3's 9 MB tokenizer.json parses in ~0.1 s."""
    for name in TOKENIZER_FILES:
        if name.endswith(".json"):
            read_model_object(folder, name)


def write_chat_template(folder: Path, template: str) -> None:
    """Make `template` the chat template of the tokenizer files in `folder` (no transformers)."""
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    (folder / "chat_template.json").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    if config_path.is_file():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError:
            return
        if isinstance(data, dict) and "chat_template" in data:
            del data["chat_template"]
            write_json(config_path, data)


def write_tokenizer(plan, folder: Path, options) -> None:
    """The output's tokenizer: the built one (tokenizer config), else the donor's or the
    tokenizer_source model's files copied; then the chat template, if any."""
    from ..tokenizer.templates import resolve_chat_template

    config, vocab = plan.config, plan.vocab
    built = getattr(vocab, "built", None)
    folders = [m.folder for m in plan.models.values()]
    template = resolve_chat_template(config.chat_template, folders)
    if built is not None:
        built.save(folder, template)
        return
    if not options.copy_tokenizer:
        if config.chat_template:
            log.warning("chat_template is ignored: no tokenizer is written (--no-copy-tokenizer)")
        return
    copy_tokenizer(tokenizer_copy_source(plan, options), folder)
    if template is not None:
        write_chat_template(folder, template)
