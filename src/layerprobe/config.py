"""Load and validate the experiment config: JSON schema (with defaults) + semantic checks.

Every error names the offending config key, so a wrong config fails at DAG build.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .models.layers import parse_key, probe_id
from .models.prompts import DEFAULT_FORMAT, DOMINANT, FILLS, IMAGE_TOKEN, placeholders, validate_prompt
from .models.specs import LLM_KINDS, ModelSpec, UnknownModel, model_spec, requested_keys

SPLITS = ("training", "validation")
# A control fill's store id is `{prompt id}+{fill}` (like `+cls` probes); `dominant` keeps the
# plain prompt id, so the oracle stores keep their paths.
FILL_SEPARATOR = "+"
STORE_ID_PATTERN = (r"[A-Za-z0-9][A-Za-z0-9_-]*"
                    + f"([{FILL_SEPARATOR}]({'|'.join(f for f in FILLS if f != DOMINANT)}))?")


class ConfigError(ValueError):
    """A config problem; the message starts with the key path."""


def _schema() -> dict[str, Any]:
    text = resources.files("layerprobe").joinpath("schemas/config.schema.yaml").read_text()
    return yaml.safe_load(text)


def schema_default(key: str) -> Any:
    """The schema's default of a config key (`weights.cache_dir`), for tools that read configs
    they cannot validate yet (`layerprobe fetch-configs`, `submit-head`)."""
    node = _schema()
    for part in key.split("."):
        node = node["properties"][part]
    return copy.deepcopy(node["default"])


def merged_raw(paths: list[str | Path]) -> dict[str, Any]:
    """Config files merged as Snakemake merges --configfile (later files win, dicts merged)."""
    def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
        for key, value in other.items():
            into[key] = merge(dict(into.get(key) or {}), value) if isinstance(value, dict) else value
        return into

    merged: dict[str, Any] = {}
    for path in paths:
        merge(merged, yaml.safe_load(Path(path).read_text()) or {})
    return merged


def _with_defaults(validator_class: type) -> type:
    """A validator that fills `default` values before validating nested properties."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001 - jsonschema API
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "<top level>"


def _format(error: jsonschema.ValidationError) -> str:
    if error.validator in ("oneOf", "anyOf"):
        # "not valid under any of the given schemas" says nothing; the branch of the value's own
        # type does (e.g. the allowed values of an enum).
        mistyped = {e.relative_schema_path[0] for e in error.context if e.validator == "type"}
        specific = [e for e in error.context if e.relative_schema_path[0] not in mistyped]
        if specific:
            return "; ".join(dict.fromkeys(_format(e) for e in specific))
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = _key_path(error)
        keys = ", ".join(f"{where}.{k}" if where != "<top level>" else k for k in extra)
        return f"unknown config key {keys}"
    if error.validator == "required":
        missing = error.message.split("'")[1]
        where = _key_path(error)
        return f"config key {where + '.' if where != '<top level>' else ''}{missing}: required but missing"
    return f"config key {_key_path(error)}: {error.message}"


def validate(raw: dict[str, Any]) -> dict[str, Any]:
    """Return a validated copy with defaults filled in; raise ConfigError naming the key."""
    config = copy.deepcopy(raw or {})
    if isinstance(config.get("probe"), dict) and "seed" in config["probe"]:
        raise ConfigError(f"config key probe.seed: replaced by probe.seeds, a list (probe.seeds: "
                          f"[{config['probe']['seed']}]); several seeds give each layer's mean ± sd over seeds")
    schema = _schema()
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError("\n".join(_format(e) for e in errors))
    # Defaults inside $ref'd model entries are not reached by the properties hook order; refill.
    for model in config["models"].values():
        _fill_model_defaults(model, schema)
    _check_models(config)
    _check_scan(config)
    _check_probe_memory(config)
    _check_billing(config)
    return config


def _check_billing(config: dict[str, Any]) -> None:
    from .billing import KEY, BillingWeightsError, parse

    try:
        parse(config["cluster"]["billing_weights"])
    except BillingWeightsError as err:
        raise ConfigError(f"config key {KEY}: {err}") from None


def _check_probe_memory(config: dict[str, Any]) -> None:
    """probe.ram_budget_mb must hold one shuffle window of every probed layer (the loader's own
    arithmetic, epoch_order); the split's size is not known here, so a full window is assumed."""
    from .features.epoch_order import fits, min_budget, window_bytes

    probe, chunk = config["probe"], config["store"]["chunk_images"]
    budget, window = probe["ram_budget_mb"] * 2**20, probe["shuffle_window_chunks"]
    for name, model in config["models"].items():
        model_spec_ = spec(config, name)
        cls = any(cls_variants(model))
        row = max(model_spec_.tokens * d * 2 + (2 * d if cls else 0) for d in
                  (model_spec_.dims()[k] for k in requested_keys(model))) + model_spec_.image_size ** 2
        need = window_bytes(window, chunk * row, probe["batch_size"] * row)
        if not fits(budget, need):
            raise ConfigError(
                f"config keys probe.ram_budget_mb / probe.shuffle_window_chunks: a shuffle window of {window} chunks "
                f"of models.{name} ({chunk} images of {row / 1024:.1f} KiB each) and {probe['batch_size']}-image "
                f"batches need a budget of at least {-(-min_budget(need) // 2**20)} MB, not {probe['ram_budget_mb']}; "
                "raise probe.ram_budget_mb or lower probe.shuffle_window_chunks (or probe.batch_size, "
                "store.chunk_images)")


def _check_scan(config: dict[str, Any]) -> None:
    chosen = config["scan"]["models"]
    unknown = [] if chosen == "all" else [m for m in chosen if m not in config["models"]]
    if unknown:
        raise ConfigError(f"scan.models: unknown model(s) {unknown}; defined under models: "
                          f"{sorted(config['models'])}")
    layers = config["scan"]["layers"]
    if layers == "all" or not config["scan"]["enabled"]:
        return
    for key in layers:
        try:
            parse_key(key)
        except ValueError as err:
            raise ConfigError(f"config key scan.layers: {err}") from None
    models = scanned_models(config)
    known = {k for name in models for k in spec(config, name).dims()}
    missing = [k for k in layers if k not in known]
    if missing:  # a key some scanned models lack is fine (vision_NN on a CLIP); one none has is a typo
        raise ConfigError(f"config key scan.layers: no scanned model has {missing} (scanned: {models}; "
                          "layer_NN counts blocks from 00, vision_NN and projector exist for llava and mllm only)")
    for name in models:
        if not any(k in spec(config, name).dims() for k in layers):
            raise ConfigError(f"config key scan.layers: models.{name} has none of {layers}; list one of its layers "
                              "or leave it out of scan.models")


def _fill_model_defaults(model: dict[str, Any], schema: dict[str, Any]) -> None:
    for key, sub in schema["$defs"]["model"]["properties"].items():
        if "default" in sub and key not in model:
            model[key] = copy.deepcopy(sub["default"])
    if model.get("kind") != "mllm":  # mllm without one: the family's own chat template
        model.setdefault("prompt_format", DEFAULT_FORMAT)
    if "tiny" in model:
        for key, sub in schema["$defs"]["tiny"]["properties"].items():
            if "default" in sub:
                model["tiny"].setdefault(key, sub["default"])


def spec(config: dict[str, Any], name: str) -> ModelSpec:
    """The spec of `models.<name>`, a hub id's config.json looked up in `weights.cache_dir` too."""
    return model_spec(name, config["models"][name], config["weights"]["cache_dir"])


def _check_models(config: dict[str, Any]) -> None:
    for name, model in config["models"].items():
        where = f"models.{name}"
        if model["kind"] in LLM_KINDS:
            _check_prompted(where, model, config["dataset"].get("class_names"))
        else:
            _check_vision_only(where, model)
        try:
            model_spec_ = spec(config, name)
        except UnknownModel as err:
            raise ConfigError(str(err)) from None
        if model["kind"] == "mllm":
            from .config_mllm import check_placement

            check_placement(where, model, model_spec_, len(prompt_ids(model)))
        for key in ("layers", "vision_layers"):
            depth = model_spec_.depth if key == "layers" else model_spec_.vision_depth
            too_deep = [i for i in model.get(key, []) if i > depth]
            if too_deep:
                raise ConfigError(f"config key {where}.{key}: layer(s) {too_deep} beyond the model's depth {depth} "
                                  f"(0 = embeddings, {depth} = last block)")
        if any(cls_variants(model)) and not model_spec_.has_cls:
            raise ConfigError(f"config key {where}.concat_cls: this model's tokens have no CLS token")
        if not requested_keys(model):
            raise ConfigError(f"config key {where}.layers: no layers requested")


# The keys each kind needs; a key of another kind is an error (a typo'd kind would otherwise
# silently ignore the model's own keys).
KIND_KEYS = {"open_clip": ("arch", "pretrained"), "hf_vision": ("hub_id",)}
MLLM_KEYS = ("image_size", "processor_kwargs")


def _check_vision_only(where: str, model: dict[str, Any]) -> None:
    """open_clip and hf_vision: an image encoder alone, no prompts."""
    kind = model["kind"]
    if (model.get("tiny") or {}).get("preset"):
        raise ConfigError(f"config key {where}.tiny.preset: only for kind llava (an open_clip arch with "
                          "pretrained: none builds a real-size random model)")
    if kind == "hf_vision" and model.get("tiny") is not None:
        raise ConfigError(f"config key {where}.tiny: not for kind hf_vision (save a tiny model and give its "
                          "directory as hub_id)")
    for key in KIND_KEYS[kind]:
        if key not in model:
            raise ConfigError(f"config key {where}.{key}: required for kind {kind}")
    if kind == "open_clip" and "revision" in model:
        raise ConfigError(f"config key {where}.revision: only for a hub id (kinds llava, hf_vision, mllm); open_clip "
                          "tags are identified by their download's own commit or URL")
    others = {k for other, keys in KIND_KEYS.items() if other != kind for k in keys} - set(KIND_KEYS[kind])
    for key in sorted(others | {"prompts", *MLLM_KEYS}):
        if key in model:
            owner = ("llava, mllm" if key == "prompts" else "mllm" if key in MLLM_KEYS
                     else next(o for o, ks in KIND_KEYS.items() if key in ks))
            raise ConfigError(f"config key {where}.{key}: only for kind {owner}" +
                              (" (and llava, mllm)" if key == "hub_id" else ""))
    if model["vision_layers"] or model["projector"]:
        raise ConfigError(f"config key {where}.vision_layers/projector: only for kinds llava, mllm (use layers)")


def _check_prompted(where: str, model: dict[str, Any], class_names: str | None) -> None:
    """llava and mllm: a hub id and prompts (mllm: its placement is checked against its spec)."""
    kind = model["kind"]
    for key in ("hub_id", "prompts"):
        if key not in model:
            raise ConfigError(f"config key {where}.{key}: required for kind {kind}")
    from .config_mllm import check_kind_keys

    check_kind_keys(where, model)
    fmt = model.get("prompt_format")
    for token in (IMAGE_TOKEN, "{prompt}") if fmt is not None else ():
        if token not in fmt:
            raise ConfigError(f"config key {where}.prompt_format: must contain {token}")
    ids = [p["id"] for p in model["prompts"]]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"config key {where}.prompts: prompt id(s) {dupes} used more than once")
    if "none" in ids:
        raise ConfigError(f"config key {where}.prompts: 'none' is reserved for prompt-free models")
    for i, prompt in enumerate(model["prompts"]):
        _check_prompt(f"{where}.prompts[{i}]", prompt, class_names)
    stores = prompt_ids(model)
    if kind == "llava" and len(stores) > 1 and fmt.index(IMAGE_TOKEN) < fmt.index("{prompt}"):
        # Causal attention: image tokens placed before the prompt cannot see it, so every
        # prompt (and every fill of one) would give byte-identical image-token states.
        raise ConfigError(f"config key {where}.prompt_format: the image comes before the prompt, so image-token "
                          f"states cannot depend on it; {len(stores)} prompts (or category fills) would give "
                          "identical features. Put {prompt} before <image> to condition on the prompt, or keep "
                          "one prompt and one fill.")


def _check_prompt(where: str, prompt: dict[str, Any], class_names: str | None) -> None:
    try:
        validate_prompt(prompt["text"], f"{where}.text")
    except ValueError as err:  # unbalanced braces, a placeholder other than {category}
        raise ConfigError(str(err)) from None
    if IMAGE_TOKEN in prompt["text"]:  # it would add a second image's worth of positions
        raise ConfigError(f"config key {where}.text: contains the image token {IMAGE_TOKEN}; the image's place "
                          "is set by the model's prompt_format, not by the prompt")
    unknown = placeholders(prompt["text"]) - {"category"}
    if unknown:
        raise ConfigError(f"config key {where}.text: unknown placeholder(s) {sorted(unknown)}; only {{category}} "
                          "is filled")
    has_category = "category" in placeholders(prompt["text"])
    if has_category and not class_names:
        raise ConfigError(f"config key {where}.text: {{category}} needs class names but dataset.class_names is null")
    if "category_fill" in prompt and not has_category:
        # Every fill of a text without the placeholder is the same prompt: identical stores.
        raise ConfigError(f"config key {where}.category_fill: the prompt has no {{category}} placeholder, so every "
                          "fill gives the same store; remove the key")


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return validate(raw)


def prompt_ids(model: dict[str, Any]) -> list[str]:
    """Store ids per model: 'none' for CLIP; for LLaVA and mllm one per prompt and category fill, in
    config order: the plain prompt id for `dominant` (and for a prompt without `{category}`),
    `{prompt id}+{fill}` for a control (e.g. `describe_category+shuffled`)."""
    if model["kind"] not in LLM_KINDS:
        return ["none"]
    return [store_id(p["id"], fill) for p in model["prompts"] for fill in category_fills(model, p)]


def category_fills(model: dict[str, Any], prompt: dict[str, Any]) -> list[str | None]:
    """The fills of one prompt entry: its own `category_fill`, else the model's, as a list;
    [None] for a prompt without `{category}` (one store, nothing to fill)."""
    if "category" not in placeholders(prompt["text"]):
        return [None]
    value = prompt.get("category_fill", model.get("category_fill", DOMINANT))
    return list(dict.fromkeys(value)) if isinstance(value, list) else [value]


def store_id(prompt_id: str, fill: str | None) -> str:
    """A store's id: the prompt id, with `+{fill}` for any fill but the oracle."""
    return prompt_id if fill in (None, DOMINANT) else f"{prompt_id}{FILL_SEPARATOR}{fill}"


def parse_store_id(store_id: str) -> tuple[str, str]:
    """(prompt id, fill) of a store id; a plain id is the `dominant` fill (or a prompt without
    `{category}`, which `store_fill` tells apart)."""
    prompt_id, separator, fill = store_id.partition(FILL_SEPARATOR)
    if not separator:
        return prompt_id, DOMINANT
    if fill not in FILLS or fill == DOMINANT:
        raise ValueError(f"store id {store_id!r}: unknown category fill {fill!r} (one of {list(FILLS[1:])})")
    return prompt_id, fill


def cls_variants(model: dict[str, Any]) -> list[bool]:
    """`concat_cls` as a list: one probe per variant, all reading the same store."""
    value = model.get("concat_cls", False)
    return list(dict.fromkeys(value)) if isinstance(value, list) else [bool(value)]


def probe_ids(model: dict[str, Any], seeds: list[int] | None = None) -> list[str]:
    """Probe names of a model, per prompt: every requested layer x every CLS variant, then the
    same for every seed after the first of `seeds` (probe.seeds)."""
    extra = [None, *(seeds or [])[1:]]
    return [probe_id(key, cls, seed) for seed in extra for key in requested_keys(model) for cls in cls_variants(model)]


def scanned_models(config: dict[str, Any]) -> list[str]:
    chosen = config["scan"]["models"]
    return list(config["models"]) if chosen == "all" else [m for m in chosen if m in config["models"]]


def scan_targets(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(model, prompt) pairs the layer scan runs on (none when the scan is disabled)."""
    if not config["scan"]["enabled"]:
        return []
    return [(m, p) for m in scanned_models(config) for p in prompt_ids(config["models"][m])]


def _prompt_entry(model: dict[str, Any], store_id: str) -> dict[str, Any] | None:
    prompt_id, _ = parse_store_id(store_id)
    return next((p for p in model.get("prompts", []) if p["id"] == prompt_id), None)


def prompt_text(model: dict[str, Any], store_id: str) -> str | None:
    """The template of a store id's prompt (`describe_category+shuffled` -> describe_category's);
    None for 'none' (CLIP) or an id the model does not define."""
    prompt = _prompt_entry(model, store_id)
    return None if prompt is None else prompt["text"]


def store_fill(model: dict[str, Any], store_id: str) -> str | None:
    """How a store's `{category}` is filled; None when its prompt has none (or it has no prompt)."""
    text = prompt_text(model, store_id)
    if text is None or "category" not in placeholders(text):
        return None
    return parse_store_id(store_id)[1]


def resolutions(config: dict[str, Any]) -> list[int]:
    return sorted({spec(config, n).image_size for n in config["models"]})


def geometry(config: dict[str, Any], name: str) -> str:
    """A model's geometry: its own `geometry`, else `dataset.geometry`."""
    model = config["models"][name]
    return model.get("geometry") or config["dataset"].get("geometry", "center_crop")


def data_name(resolution: int, geometry: str) -> str:
    """A data store's name under results/data/: `224px` (centre crop, as ever) or `224px_pad`."""
    return f"{resolution}px" + ("" if geometry == "center_crop" else f"_{geometry}")


def model_data_name(config: dict[str, Any], name: str) -> str:
    """The data store a model reads: its resolution and geometry."""
    return data_name(spec(config, name).image_size, geometry(config, name))


def data_stores(config: dict[str, Any]) -> list[tuple[int, str]]:
    """(resolution, geometry) of every data store the models need, sorted."""
    return sorted({(spec(config, n).image_size, geometry(config, n)) for n in config["models"]})
