"""Put the demo model's tokenizer files into a bundle converted before bundles carried them.

    .venv/bin/python tools/demo_tokenizer.py ppvl_batch/demo

The demo checkpoint itself is not kept (tools/work/ is git-ignored), but its tokenizer is made
deterministically by train_demo.py (SentencePiece on a seeded corpus, one thread). This rebuilds
it, proves it is the one the bundle was converted from (every piece and score of the bundle's
GGUF vocabulary, and the bundle's tokenizer_config.json and chat template byte for byte), copies
the files in and rewrites the manifest (format 2, the new files listed). The bundle id and every
other file stay as they are.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_demo  # noqa: E402
from render_pages import random_text  # noqa: E402
from tiny_model import build_tokenizer  # noqa: E402


def main(bundle: Path) -> None:
    import gguf
    import sentencepiece as spm

    from ppvl_batch.bundle.manifest import BUNDLE_FORMAT_VERSION, MANIFEST, FileEntry, Manifest, write_manifest

    manifest = Manifest.from_json(json.loads((bundle / MANIFEST).read_text(encoding="utf-8")))
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp)
        corpus_rng = random.Random(train_demo.SEED + 1)  # as train_demo.main() builds it
        build_tokenizer(tok, version="1.5", vocab_size=train_demo.VOCAB_SIZE,
                        corpus=[random_text(corpus_rng) for _ in range(4000)], spotting_markers=False)
        sp = spm.SentencePieceProcessor(model_file=str(tok / "tokenizer.model"))
        reader = gguf.GGUFReader(str(bundle / manifest.text.quants[manifest.text.default_quant]))
        tokens = reader.fields["tokenizer.ggml.tokens"]
        scores = reader.fields["tokenizer.ggml.scores"]
        for i in range(sp.get_piece_size()):
            piece = bytes(tokens.parts[tokens.data[i]]).decode()
            score = float(scores.parts[scores.data[i]][0])
            if piece != sp.id_to_piece(i) or score != sp.get_score(i):
                sys.exit(f"piece {i} differs from the bundle's vocabulary: not the demo tokenizer")
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            if (tok / name).read_bytes() != (bundle / name).read_bytes():
                sys.exit(f"{name} differs from the bundle's: not the demo tokenizer")
        for name in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json"):
            (bundle / name).write_bytes((tok / name).read_bytes())
    added = {name: FileEntry.of(bundle / name) for name in ("tokenizer.model", "added_tokens.json", "special_tokens_map.json")}
    write_manifest(bundle, dataclasses.replace(manifest, files={**manifest.files, **added}, format_version=BUNDLE_FORMAT_VERSION))
    print(f"{bundle}: tokenizer files added")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
