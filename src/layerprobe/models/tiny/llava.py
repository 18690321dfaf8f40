"""A tiny random-weight LLaVA-1.5 built fully offline (demo and tests).

Saved with `save_pretrained` like a hub snapshot, so `LlavaBackbone` loads it with exactly the
calls used for `llava-hf/llava-1.5-7b-hf`. The tokenizer is a word-level vocabulary over prompt
words and ADE20K class names; unknown words map to `<unk>`, which is fine for random weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from ...data.ade20k import CLASS_NAMES

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
CHAT_TOKENS = ["USER:", "ASSISTANT:"]  # kept whole (added tokens), as in a chat-tuned vocabulary
PROMPT_WORDS = ("describe the a an in image detail imagine what it would look like to see of and is are "
                "this that there with on at object objects picture photo scene show me please where . , ? ! :")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# Llama-style chat template: the processor's apply_chat_template gives "USER: <image>\n... ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% if message['role'] != 'user' %}</s>{% else %} {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def default_vocab_words() -> list[str]:
    """Prompt words plus every word of the ADE20K class names (lower case, sorted, unique)."""
    words = set(PROMPT_WORDS.split())
    for name in CLASS_NAMES:
        words.update(re.findall(r"\w+|[^\w\s]+", name.lower()))
    return sorted(words)


def build_tokenizer(vocab_words: list[str]) -> PreTrainedTokenizerFast:
    """Word-level, lower-cased, whitespace/punctuation split; `<s>` prepended like Llama."""
    words = [w for w in dict.fromkeys(w.lower() for w in vocab_words) if w not in SPECIALS + CHAT_TOKENS]
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHAT_TOKENS + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Added tokens are matched on the raw text before normalization/pre-tokenization.
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in CHAT_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="right", model_max_length=4096)


def build_processor(tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int) -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_config(image_token_id: int, vocab_size: int, pad_id: int, *, image_size: int, patch_size: int,
                 vision_width: int, vision_layers: int, text_width: int, text_layers: int, heads: int) -> LlavaConfig:
    vision = CLIPVisionConfig(hidden_size=vision_width, intermediate_size=4 * vision_width,
                              num_hidden_layers=vision_layers, num_attention_heads=heads, image_size=image_size,
                              patch_size=patch_size, projection_dim=vision_width, hidden_act="quick_gelu")
    text = LlamaConfig(hidden_size=text_width, intermediate_size=4 * text_width, num_hidden_layers=text_layers,
                       num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab_size,
                       max_position_embeddings=4096, pad_token_id=pad_id, bos_token_id=1, eos_token_id=2)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token_id,
                       image_seq_length=(image_size // patch_size) ** 2, vision_feature_layer=-2,
                       vision_feature_select_strategy="default", pad_token_id=pad_id)


def build_tiny_llava(out_dir: Path, *, image_size: int = 32, patch_size: int = 8, vision_width: int = 32,
                     vision_layers: int = 2, text_width: int = 32, text_layers: int = 2, heads: int = 2,
                     vocab_words: list[str] | None = None, seed: int = 0, mixing: float = 0.0) -> Path:
    """Build and save (model + processor) a random LLaVA into `out_dir`; same args, same weights.

    `mixing` scales every block's residual-branch output (vision tower and LLM) by 1 + mixing,
    as for the tiny ViT, so deeper layers lose more of the input's spatial detail and the demo's
    layers differ in what a probe can find."""
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer(vocab_words if vocab_words is not None else default_vocab_words())
    processor = build_processor(tokenizer, image_size, patch_size)
    config = build_config(tokenizer.convert_tokens_to_ids("<image>"), len(tokenizer), tokenizer.pad_token_id,
                          image_size=image_size, patch_size=patch_size, vision_width=vision_width,
                          vision_layers=vision_layers, text_width=text_width, text_layers=text_layers, heads=heads)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for layer in model.model.vision_tower.encoder.layers:
            layer.self_attn.out_proj.weight.mul_(1.0 + mixing)
            layer.mlp.fc2.weight.mul_(1.0 + mixing)
        for layer in model.model.language_model.layers:
            layer.self_attn.o_proj.weight.mul_(1.0 + mixing)
            layer.mlp.down_proj.weight.mul_(1.0 + mixing)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# llava-hf/llava-1.5-7b-hf's configuration (config.json of the hub snapshot): a CLIP ViT-L/14 at
# 336 px, a 2-layer GELU projector, Vicuna-7B (Llama: 4096 wide, 11008 MLP, 32 heads, 32 layers,
# vocabulary 32064), image token 32000, pad 32001. Unset Llama/CLIP fields take the libraries'
# defaults, as the hub config's do.
LLAVA_15_7B = {
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
               "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
               "layer_norm_eps": 1e-5},
    "text": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 32064, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "hidden_act": "silu"},
    "image_token_index": 32000, "pad_token_id": 32001, "projector_hidden_act": "gelu",
    "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "tie_word_embeddings": False,
}
PRESETS = {"llava-1.5-7b": LLAVA_15_7B}


def build_preset_tokenizer(preset: dict) -> PreTrainedTokenizerFast:
    """A stand-in for the preset's tokenizer: its special tokens at their real ids (<unk> 0, <s> 1,
    </s> 2, <image> and <pad> at the config's ids), the prompt and class-name words, and filler
    entries up to the image token, so ids and vocabulary size match the real one."""
    image_id, pad_id = preset["image_token_index"], preset["pad_token_id"]
    words = [w for w in default_vocab_words() if w not in SPECIALS]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for token in CHAT_TOKENS + words:
        vocab[token] = len(vocab)
    while len(vocab) < image_id:
        vocab[f"<unused_{len(vocab)}>"] = len(vocab)
    vocab["<image>"], vocab["<pad>"] = image_id, pad_id
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in CHAT_TOKENS])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"}, padding_side="right", model_max_length=4096)


def build_preset_llava(out_dir: Path, preset: str, *, text_layers: int, seed: int = 0,
                       save_dtype: torch.dtype = torch.float16) -> Path:
    """A random-weight LLaVA with a real model's exact configuration but `text_layers` LLM layers
    (the real-size smoke test: every shape as in the real model, minutes on a CPU). Saved in the
    real checkpoint's fp16, so loading goes through the same dtype handling."""
    spec = PRESETS[preset]
    vision = CLIPVisionConfig(**spec["vision"])
    text = LlamaConfig(**{**spec["text"], "num_hidden_layers": text_layers}, pad_token_id=spec["pad_token_id"],
                       bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=spec["image_token_index"],
                         image_seq_length=(vision.image_size // vision.patch_size) ** 2,
                         projector_hidden_act=spec["projector_hidden_act"],
                         vision_feature_layer=spec["vision_feature_layer"],
                         vision_feature_select_strategy=spec["vision_feature_select_strategy"],
                         pad_token_id=spec["pad_token_id"], tie_word_embeddings=spec["tie_word_embeddings"])
    tokenizer = build_preset_tokenizer(spec)
    processor = build_processor(tokenizer, vision.image_size, vision.patch_size)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).to(save_dtype).eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
