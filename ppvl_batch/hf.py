"""transformers, adapted: the one module that imports it (tests/test_sources.py checks).

We use transformers' own PaddleOCR-VL and PP-DocLayout code so that our numbers are the
reference's, which means reaching into modules that are not its public API (module paths,
a private constructor, one function replaced during a forward pass). They are all here, so a
transformers release that moves them breaks one file; pyproject bounds transformers to the
versions the tests pass on. transformers is imported inside each function: importing it takes
seconds, which a command that does not need it (`--help`, a scan with nothing to do) never pays.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any


def quiet_logging() -> None:
    """Only transformers' errors on stderr: it warns about config keys it does not know (e.g.
    mrope_section, which it does use), noise for a command-line tool."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()


def auto_tokenizer(folder: Path | str, **options: Any) -> Any:
    """The checkpoint's (or bundle's) own tokenizer, from local files only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, **options)


def paddleocr_vl_config(config: dict[str, Any]) -> Any:
    """PaddleOCRVLConfig from a config.json's content."""
    from transformers import PaddleOCRVLConfig

    return PaddleOCRVLConfig(**config)


def paddleocr_vl_image_processor(**options: Any) -> Any:
    """transformers' PIL image processor of PaddleOCR-VL (smart_resize, rescale, normalize, patchify)."""
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import PaddleOCRVLImageProcessorPil

    return PaddleOCRVLImageProcessorPil(**options)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """PaddleOCR-VL's smart_resize: (height, width) after it; ValueError for a size it refuses."""
    from transformers.models.paddleocr_vl.image_processing_pil_paddleocr_vl import smart_resize as resize

    return resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def sdpa_attention(*args: Any, **kwargs: Any) -> Any:
    """transformers' scaled-dot-product attention function (the `sdpa` implementation)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def paddleocr_vl_vision(config: Any, attention: Callable[..., Any]) -> tuple[Any, Any]:
    """PaddleOCR-VL's vision encoder and projector modules for `config` (a PaddleOCRVLConfig),
    the encoder's attention being `attention` (registered under its function name)."""
    from transformers import AttentionInterface
    from transformers.models.paddleocr_vl.modeling_paddleocr_vl import PaddleOCRProjector, PaddleOCRVisionModel

    name = f"ppvl_{attention.__name__}"
    AttentionInterface.register(name, attention)
    return PaddleOCRVisionModel._from_config(config.vision_config, attn_implementation=name), PaddleOCRProjector(config)


def no_init_weights() -> AbstractContextManager[Any]:
    """Modules built inside skip their random initialization (the weights come from a file)."""
    from transformers.initialization import no_init_weights as skip

    return skip()


def missing_class(class_name: str) -> str | None:
    """None when the installed transformers has `class_name`, else its version (for the error)."""
    import transformers

    return None if hasattr(transformers, class_name) else transformers.__version__


def load_pretrained(class_name: str, folder: Path, **options: Any) -> Any:
    """transformers' model class `class_name` from a local folder."""
    import transformers

    return getattr(transformers, class_name).from_pretrained(folder, local_files_only=True, **options)


_patch_lock = threading.Lock()
_patch_users = 0  # blocks inside v3_mask_to_box now
_v3_originals: dict[Any, Callable[..., Any]] = {}


@contextmanager
def v3_mask_to_box(replacement: Callable[..., Any]) -> Iterator[None]:
    """During the block, PP-DocLayoutV3's `mask_to_box_coordinate` is `replacement`; put back when
    the last block that asked for it ends (blocks in several threads overlap safely). Nothing is
    replaced in a transformers without that function."""
    global _patch_users
    from transformers.models.pp_doclayout_v3 import modeling_pp_doclayout_v3 as modeling

    with _patch_lock:
        original = getattr(modeling, "mask_to_box_coordinate", None)
        if original is None:
            patched = False
        else:
            patched = True
            if _patch_users == 0:
                _v3_originals[modeling] = original
                modeling.mask_to_box_coordinate = replacement
            _patch_users += 1
    try:
        yield
    finally:
        if patched:
            with _patch_lock:
                _patch_users -= 1
                if _patch_users == 0:
                    modeling.mask_to_box_coordinate = _v3_originals.pop(modeling)

