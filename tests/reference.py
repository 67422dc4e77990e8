"""The transformers reference implementation, driven the way the model card drives it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from PIL import Image


@functools.lru_cache(maxsize=4)
def load(checkpoint: Path):
    from transformers import AutoTokenizer, PaddleOCRVLConfig, PaddleOCRVLForConditionalGeneration
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    config = PaddleOCRVLConfig.from_pretrained(checkpoint)
    # The original PaddleOCR-VL code does not tie lm_head to the embeddings; transformers ties
    # them for flat configs, so the reference is told explicitly (docs/design.md section 1).
    config.tie_word_embeddings = False
    config.text_config.tie_word_embeddings = False
    model = PaddleOCRVLForConditionalGeneration.from_pretrained(checkpoint, config=config, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    pre = json.loads((Path(checkpoint) / "preprocessor_config.json").read_text())
    processor = PaddleOCRVLImageProcessorPil(
        min_pixels=pre["min_pixels"], max_pixels=pre["max_pixels"], image_mean=pre["image_mean"], image_std=pre["image_std"]
    )
    return model, tokenizer, processor


def prompt_ids(checkpoint: Path, text: str, image_tokens: int) -> list[int]:
    """Token ids of the whole prompt, as the HF tokenizer + chat template make them."""
    _, tokenizer, _ = load(checkpoint)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = rendered.replace("<|IMAGE_PLACEHOLDER|>", "<|IMAGE_PLACEHOLDER|>" * image_tokens)
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def generate(
    checkpoint: Path, image: Image.Image, text: str, max_new_tokens: int, max_pixels: int | None = None
) -> tuple[list[int], str]:
    """Greedy tokens (without </s>) and their text."""
    model, tokenizer, processor = load(checkpoint)
    size = {"shortest_edge": processor.size.shortest_edge, "longest_edge": max_pixels or processor.size.longest_edge}
    pixels = processor(images=[image.convert("RGB")], size=size, return_tensors="pt")
    n = int(pixels["image_grid_thw"][0].prod()) // 4
    ids = torch.tensor([prompt_ids(checkpoint, text, n)])
    # Without mm_token_type_ids transformers silently falls back to 1-D positions.
    image_tokens = (ids == model.config.image_token_id).int()
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=image_tokens,
        pixel_values=pixels["pixel_values"],
        image_grid_thw=pixels["image_grid_thw"], max_new_tokens=max_new_tokens, do_sample=False,
    )
    generated = out[0, ids.shape[1]:].tolist()
    if generated and generated[-1] == tokenizer.eos_token_id:
        generated = generated[:-1]
    return generated, tokenizer.decode(generated, skip_special_tokens=False)


@torch.inference_mode()
def generate_probs(
    checkpoint: Path, image: Image.Image, text: str, max_new_tokens: int, max_pixels: int | None = None, top: int = 0
) -> tuple[list[int], list[float], list[list[tuple[int, float]]], int]:
    """Greedy tokens (with </s> when it ended the answer), the probability of each under the
    softmax of its step's raw logits (`generate(..., output_logits=True)`), each step's `top` most
    likely (id, log probability), and the eos id."""
    model, tokenizer, processor = load(checkpoint)
    size = {"shortest_edge": processor.size.shortest_edge, "longest_edge": max_pixels or processor.size.longest_edge}
    pixels = processor(images=[image.convert("RGB")], size=size, return_tensors="pt")
    n = int(pixels["image_grid_thw"][0].prod()) // 4
    ids = torch.tensor([prompt_ids(checkpoint, text, n)])
    image_tokens = (ids == model.config.image_token_id).int()
    out = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=image_tokens,
        pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"], max_new_tokens=max_new_tokens,
        do_sample=False, output_logits=True, return_dict_in_generate=True,
    )
    generated = out.sequences[0, ids.shape[1]:].tolist()
    probs, tops = [], []
    for token, logits in zip(generated, out.logits):
        logprobs = torch.log_softmax(logits[0].float(), dim=-1)
        probs.append(float(logprobs[token].exp()))
        values, indices = logprobs.topk(top) if top else (torch.empty(0), torch.empty(0, dtype=torch.long))
        tops.append(list(zip(indices.tolist(), values.tolist())))
    return generated, probs, tops, tokenizer.eos_token_id


@torch.inference_mode()
def forced_probs(checkpoint: Path, image: Image.Image, text: str, tokens: list[int]) -> list[float]:
    """The probability of each of `tokens` as the answer, under the softmax of the raw logits of
    one forward pass over the prompt and those tokens (teacher forcing: for tokens that were
    sampled rather than picked greedily)."""
    model, _, processor = load(checkpoint)
    pixels = processor(images=[image.convert("RGB")], return_tensors="pt")
    n = int(pixels["image_grid_thw"][0].prod()) // 4
    prompt = prompt_ids(checkpoint, text, n)
    ids = torch.tensor([prompt + tokens])
    image_tokens = (ids == model.config.image_token_id).int()
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=image_tokens,
                   pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"]).logits[0]
    logprobs = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
    return [float(logprobs[i, t].exp()) for i, t in enumerate(tokens)]
