"""Print, for each test checkpoint (plain and tokenizer variants), the prompt ids of every task as
transformers makes them (tokenizer + chat template, one image token) and as our recognizer uses
them (before + image + after).

    .venv/bin/python tools/prompt_ids.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools"), str(ROOT / "tests")]

import reference  # noqa: E402
import tiny_model  # noqa: E402

from ppvl_batch.convert import convert  # noqa: E402
from ppvl_batch.engine.prompt import TASKS  # noqa: E402
from ppvl_batch.engine.tokenizer import PromptTokenizer  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for variant in [None, *tiny_model.TOKENIZER_VARIANTS]:
            name = variant or "plain"
            ckpt = tiny_model.build_checkpoint(Path(tmp) / f"{name}-ckpt", seed=11, tokenizer_variant=variant)
            bundle = convert(str(ckpt), Path(tmp) / name, ["F32"])
            ours = PromptTokenizer.load(bundle)
            print(f"## {name}")
            for task, text in TASKS.items():
                before, after = ours.prompt_ids(text)
                mine = before + [ours.placeholder_id] + after
                theirs = reference.prompt_ids(ckpt, text, 1)
                print(f"{task:9} {'equal' if mine == theirs else 'DIFFERENT'}  transformers {theirs}")
                print(f"{'':9}        ours         {mine}")


if __name__ == "__main__":
    main()
