"""Text side of the tiny multimodal LLMs: a byte-level stand-in tokenizer with each family's special
tokens, and chat templates that put the image and the text where each family's own template does.

The real checkpoints' tokenizers cannot be had offline; what the tests need from them is the
special tokens (by name, as the v5 processors read them: `tokenizer.image_token` ...) and the
order of image and prompt. Plain text is one token per byte.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast


def byte_tokenizer(specials: list[str], named: dict[str, str]) -> PreTrainedTokenizerFast:
    """256 byte tokens, then `specials` and the `named` tokens (bos_token, image_token, ...) as
    special added tokens; names other than the standard ones become model-specific special tokens."""
    vocab = {char: i for i, char in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokens = list(dict.fromkeys([*specials, *named.values()]))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side="right", **named)


def _content(image: str, text: str = "{{ c['text'] }}") -> str:
    """The user turn's items in their given order: image placeholder or text."""
    return ("{% for c in m['content'] %}{% if c['type'] == 'image' %}" + image
            + "{% elif c['type'] == 'text' %}" + text + "{% endif %}{% endfor %}")


def _images_then_text(image: str, sep: str = "") -> str:
    """LLaVA-NeXT/OneVision: every image first, whatever the content order, then the text."""
    return ("{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}" + image + "{% endfor %}"
            "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}" + sep
            + "{{ c['text'] }}{% endfor %}")


_TURNS = "{% for m in messages %}"
_QWEN_SYSTEM = ("{% if loop.first and m['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
                "<|im_end|>\n{% endif %}")
TEMPLATES = {
    "gemma3": ("{{ bos_token }}" + _TURNS + "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
               + _content("<start_of_image>", "{{ c['text'] | trim }}") + "<end_of_turn>\n{% endfor %}"
               "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"),
    "qwen": (_TURNS + _QWEN_SYSTEM + "<|im_start|>{{ m['role'] }}\n"
             + _content("<|vision_start|><|image_pad|><|vision_end|>") + "<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "internvl": (_TURNS + "<|im_start|>{{ m['role'] }}\n" + _content("<IMG_CONTEXT>\n") + "<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "idefics3": ("<|begin_of_text|>" + _TURNS + "{{ m['role'] | capitalize }}:" + _content("<image>")
                 + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"),
    "llava_next": (_TURNS + "{% if m['role'] == 'user' %}[INST] " + _images_then_text("<image>\n")
                   + " [/INST]{% endif %}{% endfor %}"),
    "llava_onevision": (_TURNS + "<|im_start|>{{ m['role'] }} " + _images_then_text("<image>\n")
                        + "<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}
