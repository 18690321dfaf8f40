"""Tiny random multimodal LLMs of every kind-mllm family, built offline from the families' real
config, model and processor classes and saved with `save_pretrained`, so `MllmBackbone` loads
them by path exactly as it loads a hub snapshot (tests and the end-to-end overlay).

Each keeps its family's geometry at a small size: 4 x 4 token grids, 2 vision blocks (LLaVA-NeXT:
3), 2 LLM layers of width 32. PaliGemma, Qwen and InternVL share 112 px (one data store in the
end-to-end test): SigLIP at patch 28, Qwen at its processor's 14 (2x2 merge), InternVL at 14
(pixel shuffle); the others are smaller. Parameters the libraries
initialise to zero (Gemma 3's projection, InternVL's position embeddings and CLS) are drawn at
random, so every input pixel reaches the features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .mllm_text import TEMPLATES, byte_tokenizer

WIDTH = 32
VISION = dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TEXT = dict(hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16)
TINY_SIZE = 112  # PaliGemma, Qwen, InternVL
QWEN_IMAGE_SIZE = TINY_SIZE  # models.<name>.image_size of a tiny Qwen: 8 x 8 patches, 4 x 4 tokens
ROW_COL = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]


def _text_ids(tokenizer: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)


def paligemma(gemma2: bool = False) -> tuple[Any, Any]:
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    tokenizer = byte_tokenizer([], {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>",
                                    "unk_token": "<unk>", "image_token": "<image>"})
    image = SiglipImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE}, image_seq_length=16)
    processor = PaliGemmaProcessor(image_processor=image, tokenizer=tokenizer)  # adds <loc>/<seg> tokens
    text_class = Gemma2Config if gemma2 else GemmaConfig
    text = text_class(**TEXT, **_text_ids(processor.tokenizer), **({"sliding_window": 64} if gemma2 else {}))
    config = PaliGemmaConfig(vision_config=SiglipVisionConfig(**VISION, image_size=TINY_SIZE, patch_size=28,
                                                              vision_use_head=False),
                             text_config=text, image_token_index=processor.image_token_id, projection_dim=WIDTH,
                             hidden_size=WIDTH, vocab_size=len(processor.tokenizer))
    return PaliGemmaForConditionalGeneration(config), processor


def gemma3() -> tuple[Any, Any]:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )

    tokenizer = byte_tokenizer(["<start_of_turn>", "<end_of_turn>"], {
        "pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>",
        "image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    image = Gemma3ImageProcessor(size={"height": 64, "width": 64}, do_pan_and_scan=False)
    processor = Gemma3Processor(image_processor=image, tokenizer=tokenizer, chat_template=TEMPLATES["gemma3"],
                                image_seq_length=16)
    text = Gemma3TextConfig(**TEXT, **_text_ids(tokenizer), sliding_window=512,
                            layer_types=["sliding_attention", "full_attention"])
    vision = SiglipVisionConfig(**VISION, image_size=64, patch_size=8, vision_use_head=False)
    config = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=16,
                          image_token_index=tokenizer.image_token_id, boi_token_index=tokenizer.boi_token_id,
                          eoi_token_index=tokenizer.eoi_token_id)
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # zero-initialised by the library: every image feature would be 0
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return model, processor


def qwen2_vl(v2_5: bool = False) -> tuple[Any, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )
    from transformers.models.qwen2_5_vl import configuration_qwen2_5_vl as q25
    from transformers.models.qwen2_vl import configuration_qwen2_vl as q2

    tokenizer = byte_tokenizer(["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"], {
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>"})
    processor_class = Qwen2_5_VLProcessor if v2_5 else Qwen2VLProcessor
    processor = processor_class(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor(), chat_template=TEMPLATES["qwen"])
    if v2_5:  # hidden_size is the ViT width; a 56-px window (2 x 2 tokens) so the 4 x 4 grid has 4 windows
        vision: Any = q25.Qwen2_5_VLVisionConfig(depth=2, hidden_size=WIDTH, out_hidden_size=WIDTH,
                                                 intermediate_size=64, num_heads=2, window_size=56,
                                                 fullatt_block_indexes=[1])
    else:  # Qwen2-VL: embed_dim is the ViT width, hidden_size the merger's output (the LLM's width)
        vision = q2.Qwen2VLVisionConfig(depth=2, embed_dim=WIDTH, hidden_size=WIDTH, num_heads=2, mlp_ratio=2)
    text_class = q25.Qwen2_5_VLTextConfig if v2_5 else q2.Qwen2VLTextConfig
    text = text_class(**TEXT, **{**_text_ids(tokenizer), "bos_token_id": None},
                      rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4})
    config_class = Qwen2_5_VLConfig if v2_5 else Qwen2VLConfig
    config = config_class(vision_config=vision, text_config=text, image_token_id=tokenizer.image_token_id,
                          video_token_id=tokenizer.video_token_id,
                          vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                          vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"))
    return (Qwen2_5_VLForConditionalGeneration if v2_5 else Qwen2VLForConditionalGeneration)(config), processor


def internvl() -> tuple[Any, Any]:
    from transformers import (
        GotOcr2ImageProcessor,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVideoProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    tokenizer = byte_tokenizer(["<|im_start|>"], {
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "start_image_token": "<img>",
        "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    image = GotOcr2ImageProcessor(size={"height": TINY_SIZE, "width": TINY_SIZE}, crop_to_patches=False)
    processor = InternVLProcessor(image_processor=image, tokenizer=tokenizer, image_seq_length=16,
                                  video_processor=InternVLVideoProcessor(size={"height": TINY_SIZE,
                                                                               "width": TINY_SIZE}),
                                  chat_template=TEMPLATES["internvl"])
    text = Qwen2Config(**TEXT, **{**_text_ids(tokenizer), "bos_token_id": None})
    config = InternVLConfig(vision_config=InternVLVisionConfig(**VISION, image_size=TINY_SIZE, patch_size=14),
                            text_config=text, image_token_id=tokenizer.context_image_token_id, image_seq_length=16,
                            downsample_ratio=0.5)
    model = InternVLForConditionalGeneration(config)
    with torch.no_grad():  # zero-initialised by the library: the patches would not know their place
        model.model.vision_tower.embeddings.position_embeddings.normal_(0, 0.5)
        model.model.vision_tower.embeddings.cls_token.normal_(0, 0.5)
    return model, processor


def idefics3() -> tuple[Any, Any]:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    tokenizer = byte_tokenizer(["<fake_token_around_image>", "<global-img>", *ROW_COL], {
        "bos_token": "<|begin_of_text|>", "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>",
        "image_token": "<image>"})
    image = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": 64},
                                   max_image_size={"longest_edge": 64})
    processor = Idefics3Processor(image_processor=image, tokenizer=tokenizer, image_seq_len=16,
                                  chat_template=TEMPLATES["idefics3"])
    text = LlamaConfig(**TEXT, **_text_ids(processor.tokenizer))
    config = Idefics3Config(vision_config=Idefics3VisionConfig(**VISION, image_size=64, patch_size=8),
                            text_config=text, image_token_id=processor.image_token_id, scale_factor=2)
    return Idefics3ForConditionalGeneration(config), processor


def llava_next() -> tuple[Any, Any]:
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        MistralConfig,
    )

    tokenizer = byte_tokenizer([], {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                    "pad_token": "<pad>", "image_token": "<image>"})
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    image = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                    image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=TEMPLATES["llava_next"])
    vision = CLIPVisionConfig(**{**VISION, "num_hidden_layers": 3}, image_size=32, patch_size=8, projection_dim=WIDTH)
    config = LlavaNextConfig(vision_config=vision, text_config=MistralConfig(**TEXT, **_text_ids(tokenizer)),
                             image_token_index=tokenizer.image_token_id, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", image_grid_pinpoints=pinpoints,
                             image_seq_length=16)
    return LlavaNextForConditionalGeneration(config), processor


def llava_onevision() -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    tokenizer = byte_tokenizer(["<|im_start|>"], {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                  "image_token": "<image>", "video_token": "<video>"})
    # 36 px at patch 8, as SigLIP-384 at patch 14: the tower reads 4 x 4 patches (32 px), never the rest
    pinpoints = [[36, 36], [36, 72], [72, 36], [72, 72]]
    image = LlavaOnevisionImageProcessor(size={"height": 36, "width": 36}, image_grid_pinpoints=pinpoints)
    processor = LlavaOnevisionProcessor(image_processor=image, tokenizer=tokenizer,
                                        video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
                                        vision_feature_select_strategy="full",
                                        chat_template=TEMPLATES["llava_onevision"])
    text = Qwen2Config(**TEXT, **{**_text_ids(tokenizer), "bos_token_id": None})
    config = LlavaOnevisionConfig(vision_config=SiglipVisionConfig(**VISION, image_size=36, patch_size=8,
                                                                   vision_use_head=False),
                                  text_config=text, image_token_index=tokenizer.image_token_id,
                                  video_token_index=tokenizer.video_token_id, vision_feature_layer=-1,
                                  vision_feature_select_strategy="full", image_grid_pinpoints=pinpoints)
    return LlavaOnevisionForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "paligemma": paligemma, "paligemma2": lambda: paligemma(gemma2=True), "gemma3": gemma3,
    "qwen2_vl": qwen2_vl, "qwen2_5_vl": lambda: qwen2_vl(v2_5=True), "internvl": internvl,
    "idefics3": idefics3, "llava_next": llava_next, "llava_onevision": llava_onevision,
}


def build_tiny_mllm(out_dir: str | Path, family: str, seed: int = 0) -> Path:
    """Build family `family` (a BUILDERS key) with random weights (same seed, same weights) and save
    model and processor to `out_dir`."""
    torch.manual_seed(seed)
    model, processor = BUILDERS[family]()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
