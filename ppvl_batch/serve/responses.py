"""The JSON the server answers with, in OpenAI's Chat Completions shapes: a completion, a stream
chunk, usage, our extra `ppvl.pages`, and `logprobs`.

Log probabilities are the decode loop's own (PageResult.token_probs: the softmax of each step's
raw logits, before temperature and top_p), so they equal what `scan` and the library compute for
the same page. A probability that underflowed to 0 is answered as -9999.0, the floor OpenAI uses.
A token's `bytes` are what it stands for in the middle of a text (Detokenizer.token_bytes); its
`token` is that as UTF-8, or `bytes:\\xNN...` when the bytes are part of a character.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from ..engine.answers import Answer
    from ..engine.detokenize import Detokenizer
    from ..engine.generate import TokenChoice

LOGPROB_FLOOR = -9999.0


def usage(answer: Answer) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def pages(answer: Answer) -> list[dict[str, Any]]:
    """Each image's own finish reason, token counts and size (the response's `ppvl.pages`)."""
    return [{"finish_reason": p.finish_reason, "prompt_tokens": p.prompt_tokens, "completion_tokens": p.output_tokens,
             "width": p.width, "height": p.height} for p in answer.pages]


def completion(rid: str, model: str, answer: Answer, logprobs: dict[str, Any] | None, created: int) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": logprobs,
                     "finish_reason": answer.finish_reason}],
        "usage": usage(answer),
        "ppvl": {"pages": pages(answer)},
    }


def chunk(rid: str, created: int, model: str, delta: dict[str, Any], finish: str | None,
          logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


# -- logprobs -----------------------------------------------------------------------------------


def answer_tokens(answer: Answer) -> list[TokenChoice]:
    """Every generated token of an answer, page after page, as (id, log probability, top)."""
    out: list[TokenChoice] = []
    for page in answer.pages:
        tops = page.top_logprobs or [[] for _ in page.token_ids]
        out += [(t, _log(p), top) for t, p, top in zip(page.token_ids, page.token_probs, tops)]
    return out


def logprobs_content(detokenizer: Detokenizer, tokens: Sequence[TokenChoice]) -> dict[str, Any]:
    """OpenAI's `choices[].logprobs` for these tokens: {"content": [{token, logprob, bytes,
    top_logprobs: [{token, logprob, bytes}]}], "refusal": null}."""
    def entry(token: int, logprob: float) -> dict[str, Any]:
        raw = detokenizer.token_bytes(token)
        return {"token": token_text(raw), "logprob": max(logprob, LOGPROB_FLOOR), "bytes": list(raw)}

    content = [{**entry(t, lp), "top_logprobs": [entry(a, alp) for a, alp in top]} for t, lp, top in tokens]
    return {"content": content, "refusal": None}


def token_text(raw: bytes) -> str:
    """A token's text: its bytes as UTF-8, or `bytes:\\xNN...` when they are not whole characters."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else LOGPROB_FLOOR
