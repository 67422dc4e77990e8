"""Train the bundled demo model: a small PaddleOCRVLForConditionalGeneration (the real
architecture, narrow and shallow) learns to read synthetic printed pages, from scratch, on CPU.

    .venv/bin/python tools/train_demo.py --out tools/work/demo --steps 1200 --stop-at 800
    .venv/bin/python tools/train_demo.py --out tools/work/demo --steps 2000   # resumes; ~30 min in all

(the published demo model was trained so: a 1200-step schedule stopped at step 800, then resumed
with the schedule stretched to 2000 steps, see tools/README.md.)

Writes tools/work/demo/train_state.pt every --save-every steps (a killed run resumes from it with
the same command) and tools/work/demo/checkpoint/ (HF layout: config, weights, tokenizer,
preprocessor_config.json) at the end, which `ppvl-ocr convert` turns into ppvl_batch/demo/.
The recipe and the measured numbers are in tools/README.md. Needs the fonts named in
render_pages.py.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render_pages import random_text, render_page  # noqa: E402
from tiny_model import build_tokenizer, make_config, save_checkpoint, write_preprocessor  # noqa: E402

SEED = 1234
# Small images keep the vision tower and the prefill cheap: at most 120 merged image tokens, a
# 20 x 6 cell page (render_pages.py), which the scanner renders at zoom 1.0.
PIXELS = (28 * 28 * 16, 28 * 28 * 120)
SIZES: dict[str, dict[str, Any]] = {
    "text": dict(
        hidden_size=256, intermediate_size=768, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, mrope_section=[2, 8, 22],
    ),
    "vision": dict(hidden_size=192, intermediate_size=768, num_hidden_layers=3, num_attention_heads=3),
}
# M-RoPE gives the lowest frequencies to the image column (w) and row (h) sections. With the real
# model's theta of 500000 adjacent columns differ by under 0.001 rad, and a model trained from
# scratch in minutes cannot learn where to read; theta 100 with a wide w section gives columns
# 0.24..0.012 rad and rows 0.75..0.27 rad per step. Both are plain config values (GGUF
# rope.freq_base and rope.dimension_sections), so llama.cpp runs the same model.
ROPE_THETA = 100.0
VOCAB_SIZE = 384  # near character level: 256 byte-fallback pieces, the characters, a few merges
TASK = "OCR:"
EOS_ID = 2


class Encoder:
    """Turns pages into model inputs exactly as the recognizer will: the checkpoint's chat template
    with N image placeholders, and the PIL image processor built from preprocessor_config.json."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer
        from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

        model_dir = Path(model_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        cfg = json.loads((model_dir / "preprocessor_config.json").read_text())
        cfg.pop("image_processor_type", None)
        self.processor = PaddleOCRVLImageProcessorPil(**cfg)
        self.merge = cfg["merge_size"]
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TASK}]}]
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        self.image_id = self.tokenizer.convert_tokens_to_ids("<|IMAGE_PLACEHOLDER|>")
        at = ids.index(self.image_id)
        self.before, self.after = ids[:at], ids[at + 1:]

    def prompt_ids(self, n_image_tokens: int) -> list[int]:
        return self.before + [self.image_id] * n_image_tokens + self.after

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) + [EOS_ID]

    def batch(self, images: list, texts: list[str] | None = None, centers: list | None = None) -> dict[str, torch.Tensor]:
        """Right-padded batch; with texts, the answers are appended and only they carry labels.
        With the characters' centres (training), also `guide`: for each position that predicts
        an answer token, the position of the image token showing that token's last character."""
        vis = self.processor(images=images, return_tensors="pt")
        grid = vis["image_grid_thw"]
        seqs, labels, guides = [], [], []
        for i, thw in enumerate(grid.tolist()):
            prompt = self.prompt_ids(thw[0] * thw[1] * thw[2] // self.merge**2)
            answer = self.answer_ids(texts[i]) if texts is not None else []
            seqs.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
            if centers is not None:
                guides.append(self._guide(images[i].size, thw, len(prompt), answer, centers[i]))
        width = max(len(s) for s in seqs)
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
        attention = torch.zeros(len(seqs), width, dtype=torch.long)
        label_t = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, lab) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(s)] = torch.tensor(s)
            attention[i, : len(s)] = 1
            label_t[i, : len(lab)] = torch.tensor(lab)
        out = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "pixel_values": vis["pixel_values"],
            "image_grid_thw": grid,
            "mm_token_type_ids": (input_ids == self.image_id).int(),
        }
        if texts is not None:
            out["labels"] = label_t
        if centers is not None:
            guide_t = torch.full((len(seqs), width), -1, dtype=torch.long)
            for i, g in enumerate(guides):
                for pos, target in g.items():
                    guide_t[i, pos] = target
            out["guide"] = guide_t
        return out

    def _token_of(self, size: tuple[int, int], thw: list[int], center: tuple[float, float]) -> int:
        """Index (row-major over the merged grid) of the image token that shows a pixel."""
        unit = self.processor.patch_size * self.merge  # pixels per image token side, after resizing
        cols, rows = thw[2] // self.merge, thw[1] // self.merge
        sx, sy = thw[2] * self.processor.patch_size / size[0], thw[1] * self.processor.patch_size / size[1]
        col = min(cols - 1, max(0, int(center[0] * sx // unit)))
        row = min(rows - 1, max(0, int(center[1] * sy // unit)))
        return row * cols + col

    def _guide(self, size: tuple[int, int], thw: list[int], start: int, answer: list[int], centers: list) -> dict[int, int]:
        out, char = {}, 0
        for k, piece in enumerate(self.tokenizer.convert_ids_to_tokens(answer[:-1])):
            char += 1 if piece.startswith("<0x") else len(piece)
            c = centers[char - 1] if char <= len(centers) else None
            if c is not None:
                out[start + k - 1] = len(self.before) + self._token_of(size, thw, c)
        if char != len(centers):  # pieces and characters disagree: no guidance for this page
            return {}
        return out

    def char_id(self, ch: str) -> int:
        piece = "\u2581" if ch == " " else ch
        idx = self.tokenizer.convert_tokens_to_ids(piece)
        return idx if idx not in (None, 0) else self.tokenizer.convert_tokens_to_ids(f"<0x{ord(ch):02X}>")

    def token_chars(self, images: list, texts: list[str], centers: list, grid: torch.Tensor) -> torch.Tensor:
        """For every image token of the batch, the token id of the character it shows (pages are
        printed one character per token), -1 where it shows paper."""
        sizes = (grid[:, 1] * grid[:, 2] // self.merge**2).tolist()
        out = torch.full((sum(sizes),), -1, dtype=torch.long)
        offset = 0
        for img, text, cs, thw, n in zip(images, texts, centers, grid.tolist(), sizes):
            for ch, c in zip(text, cs):
                if c is not None:
                    out[offset + self._token_of(img.size, thw, c)] = self.char_id(ch)
            offset += n
        return out


@torch.no_grad()
def read_pages(model, enc: Encoder, images: list, max_new_tokens: int = 160) -> list[str]:
    """Greedy transformers generate, one page at a time (no padding effects)."""
    out = []
    for img in images:
        inputs = enc.batch([img])
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=EOS_ID, pad_token_id=0)
        new = gen[0, inputs["input_ids"].shape[1]:].tolist()
        if EOS_ID in new:
            new = new[: new.index(EOS_ID)]
        out.append(enc.tokenizer.decode(new, skip_special_tokens=False))
    return out


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(hyps: list[str], refs: list[str]) -> float:
    """Character error rate over a set: total edits / total reference characters."""
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs)) / max(1, sum(len(r) for r in refs))


def heldout_pages(n: int, seed: int = 99) -> list:
    """Evaluation pages: a seed the trainer never uses, so the text combinations, pseudo-words,
    numbers and dates are new."""
    rng = random.Random(seed)
    return [render_page(rng) for _ in range(n)]


def image_token_penalty(tokens: torch.Tensor) -> torch.Tensor:
    """Keeps the image tokens informative. Without it Adam grows a shared component of the
    projector's output within a few hundred steps (image tokens become one large constant
    vector, norm in the hundreds, per-token differences under 1%), after which the decoder's
    RMSNorm sees identical image tokens and nothing can be read. Penalise the mean token
    (mostly paper background) and an RMS away from 1, the scale of the token embeddings."""
    return tokens.mean(0).pow(2).mean() + (tokens.pow(2).mean().sqrt() - 1.0).pow(2)


def guide_loss(attentions: tuple[torch.Tensor, ...], guide: torch.Tensor) -> torch.Tensor:
    """Training-only help with *where* to read: head 0 of the last decoder layer is pulled
    towards the image token that shows the character being predicted. Without it a model this
    small, from scratch, spends the whole CPU budget before it starts to use the image at all."""
    mask = guide >= 0
    p = attentions[-1][:, 0].gather(-1, guide.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -torch.log(p[mask] + 1e-6).mean()


def curriculum(step: int, total: int) -> tuple[int, float]:
    """(most lines per page, share of random-character lines) at this step.

    Start with single lines of random characters: with document words the decoder first learns
    to guess from language alone and to ignore the image. Random lines leave the image as the
    only source, so reading is learnt first; words and more lines follow."""
    if step < 0.15 * total:
        return 1, 1.0
    if step < 0.3 * total:
        return 2, 0.5
    return 4, 0.2


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("tools/work/demo"))
    ap.add_argument("--steps", type=int, default=2000, help="length of the learning-rate schedule")
    ap.add_argument("--stop-at", type=int, default=0, help="end after this step's state is saved (resume later)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=400)
    ap.add_argument("--threads", type=int, default=1, help="1 is faster than 2 when the cores are shared")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    out: Path = args.out
    tok_dir, state_path, final_dir = out / "tokenizer", out / "train_state.pt", out / "checkpoint"
    out.mkdir(parents=True, exist_ok=True)

    if not (tok_dir / "tokenizer.model").exists():
        corpus_rng = random.Random(SEED + 1)
        corpus = [random_text(corpus_rng) for _ in range(4000)]
        build_tokenizer(tok_dir, version="1.5", vocab_size=VOCAB_SIZE, corpus=corpus, spotting_markers=False)
    # The Encoder reads the tokenizer and preprocessor from a checkpoint-shaped folder.
    write_preprocessor(tok_dir, "1.5", PIXELS)
    enc = Encoder(tok_dir)
    ids = {
        "vocab": len(enc.tokenizer),
        "<|IMAGE_PLACEHOLDER|>": enc.image_id,
        "<|IMAGE_START|>": enc.tokenizer.convert_tokens_to_ids("<|IMAGE_START|>"),
        "<|IMAGE_END|>": enc.tokenizer.convert_tokens_to_ids("<|IMAGE_END|>"),
    }

    from transformers import PaddleOCRVLForConditionalGeneration

    config = make_config(ids, SIZES, rope_theta=ROPE_THETA)
    model = PaddleOCRVLForConditionalGeneration(config)
    model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})  # eager returns attentions
    with torch.no_grad():
        # Token embeddings at unit scale, like the projected image features: with the default
        # 0.02 the image tokens dominate the residual stream, grow further, and the decoder's
        # RMSNorm then scales the vision tower's gradients down until it stops learning.
        model.model.language_model.embed_tokens.weight.normal_(0.0, 1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    # The projector's output (the image tokens the decoder sees) is kept for a training-only
    # regulariser; the model itself is unchanged.
    image_tokens: list[torch.Tensor] = []
    model.model.projector.register_forward_hook(lambda _m, _i, out: image_tokens.append(out))
    step, elapsed = 0, 0.0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]
        print(f"resumed at step {step}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params / 1e6:.2f}M vocab {config.text_config.vocab_size}", flush=True)

    # Page i of the run is drawn from its own seed, so a resumed run sees the same data.
    evals = heldout_pages(16, seed=99)
    model.train()
    t0 = time.time() - elapsed
    ema = None
    while step < args.steps:
        lines, p_random = curriculum(step, args.steps)
        pages = [render_page(random.Random(SEED * 1_000_003 + step * args.batch + i), max_lines=lines, p_random=p_random)
                 for i in range(args.batch)]
        batch = enc.batch([p.image for p in pages], [p.text for p in pages], [p.centers for p in pages])
        guide = batch.pop("guide")
        chars = enc.token_chars([p.image for p in pages], [p.text for p in pages], [p.centers for p in pages],
                                batch["image_grid_thw"])
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        image_tokens.clear()
        out = model(**batch, output_attentions=True)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        g_loss = guide_loss(out.attentions, guide)
        shown = chars >= 0
        # Image tokens' own outputs (through the model's lm_head) name the character they show:
        # identity then sits in the residual stream in the form the answer needs, and reading a
        # character becomes copying it from the attended token.
        image_logits = out.logits[batch["input_ids"] == enc.image_id]
        c_loss = torch.nn.functional.cross_entropy(image_logits[shown], chars[shown])
        (loss + 0.1 * image_token_penalty(image_tokens[0]) + g_loss + c_loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 10 == 0:
            print(f"step {step} loss {loss.item():.4f} ema {ema:.4f} guide {g_loss.item():.3f} chars {c_loss.item():.3f} lr {opt.param_groups[0]['lr']:.2e} "
                  f"t {time.time() - t0:.0f}s", flush=True)
        if step % args.save_every == 0 or step == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "elapsed": time.time() - t0}, state_path)
        if step == args.stop_at:
            print(f"stopped at step {step}; rerun to resume", flush=True)
            return
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            hyps = read_pages(model, enc, [p.image for p in evals])
            print(f"eval step {step} cer {cer(hyps, [p.text for p in evals]):.4f} | {hyps[0]!r} vs {evals[0].text!r}",
                  flush=True)
            model.train()

    model.eval()
    model.set_attn_implementation("sdpa")  # the checkpoint should not ask for eager attention
    # bfloat16 like the published checkpoints: halves the bundle's vision weights.
    model.to(torch.bfloat16)
    save_checkpoint(model, final_dir, layout="transformers", version="1.5", tokenizer_dir=tok_dir, pixels=PIXELS)
    print(f"done: {step} steps in {time.time() - t0:.0f}s -> {final_dir}", flush=True)


if __name__ == "__main__":
    main()
