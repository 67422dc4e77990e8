"""Generated ids -> text, exactly as `tokenizer.decode(ids, skip_special_tokens=False)`, one token
at a time (docs/prompts.md).

The text of a sequence is what the checkpoint's `tokenizers` decoder chain makes of the token
strings (added tokens as their content, ids the tokenizer does not know dropped). We run the same
chain as streaming stages, so that each token costs O(1) amortized instead of re-decoding the
answer:

    token strings --(per-token stages: Replace, ByteFallback, Metaspace, Strip)--> pieces
    pieces --Fuse--> one text --(text stages: Strip, Replace)--> final text

A stage holds back only what a later token can still change: ByteFallback the current run of
byte tokens (the whole run turns into U+FFFD if it ends as invalid UTF-8, however long it was
valid), a text Strip the trailing characters it may cut, a text Replace a possible partial match.
`TextStream` adds stop strings on top and hands out only text that is final, so the deltas it
returns always join to the final text.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import ModelError

REPLACEMENT = "\ufffd"


class UnsupportedDecoder(ModelError):
    pass


# -- per-token stages: a token string in, zero or more pieces out -----------------------------


class _Stage:
    def holding(self) -> bool:
        """Whether flush() would give out something (text or bytes held back)."""
        return False


class _TokenReplace(_Stage):
    def __init__(self, pattern: str, content: str):
        self.pattern, self.content = pattern, content

    def push(self, token: str) -> Iterable[str]:
        return (token.replace(self.pattern, self.content),)

    def flush(self) -> Iterable[str]:
        return ()


class _ByteFallback(_Stage):
    """`<0xHH>` tokens are collected; a run becomes its UTF-8 text when it is valid as a whole,
    else one U+FFFD per byte (the tokenizers rule)."""

    def __init__(self) -> None:
        self.run = bytearray()

    @staticmethod
    def byte(token: str) -> int | None:
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            try:
                return int(token[3:5], 16)
            except ValueError:
                return None
        return None

    def push(self, token: str) -> Iterable[str]:
        value = self.byte(token)
        if value is not None:
            self.run.append(value)
            return ()
        return (*self.flush(), token)

    def holding(self) -> bool:
        return bool(self.run)

    def __copy__(self) -> _ByteFallback:
        twin = _ByteFallback()
        twin.run = bytearray(self.run)  # push appends in place
        return twin

    def flush(self) -> list[str]:
        if not self.run:
            return []
        try:
            out = [self.run.decode("utf-8")]
        except UnicodeDecodeError:
            out = [REPLACEMENT] * len(self.run)
        self.run = bytearray()
        return out


class _TokenMetaspace(_Stage):
    """The replacement character becomes a space; in the first token it is dropped unless the
    prepend scheme is `never` (what the tokenizers Metaspace decoder does)."""

    def __init__(self, replacement: str, prepend_scheme: str):
        self.replacement, self.drop_first = replacement, prepend_scheme != "never"
        self.seen = 0

    def push(self, token: str) -> Iterable[str]:
        first = self.seen == 0
        self.seen += 1
        return (token.replace(self.replacement, "" if first and self.drop_first else " "),)

    def flush(self) -> Iterable[str]:
        return ()


class _TokenStrip(_Stage):
    def __init__(self, content: str, start: int):
        self.content, self.start = content, start

    def push(self, token: str) -> Iterable[str]:
        cut = 0
        while cut < min(self.start, len(token)) and token[cut] == self.content:
            cut += 1
        return (token[cut:],)

    def flush(self) -> Iterable[str]:
        return ()


# -- text stages (after Fuse): text in, final text out ----------------------------------------


class _TextStrip(_Stage):
    """Up to `start` leading `content` characters of the whole text are removed."""

    def __init__(self, content: str, start: int):
        self.content, self.left = content, start

    def push(self, text: str) -> str:
        while self.left and text:
            if text[0] != self.content:
                self.left = 0
                break
            text, self.left = text[1:], self.left - 1
        return text

    def flush(self) -> str:
        return ""


class _TextReplace(_Stage):
    """str.replace over the whole text, streamed: a tail that may start a match is held back."""

    def __init__(self, pattern: str, content: str):
        self.pattern, self.content = pattern, content
        self.held = ""

    def push(self, text: str) -> str:
        text = self.held + text
        out = []
        while True:
            at = text.find(self.pattern)
            if at < 0:
                break
            out.append(text[:at] + self.content)
            text = text[at + len(self.pattern):]
        keep = next((k for k in range(min(len(self.pattern) - 1, len(text)), 0, -1)
                     if self.pattern.startswith(text[-k:])), 0)
        self.held = text[len(text) - keep:]
        out.append(text[: len(text) - keep])
        return "".join(out)

    def holding(self) -> bool:
        return bool(self.held)

    def flush(self) -> str:
        held, self.held = self.held, ""
        return held


class _Join(_Stage):
    """Without any decoder, tokenizers joins the token strings with one space."""

    def __init__(self, separator: str):
        self.separator, self.first = separator, True

    def push(self, text: str) -> str:
        if self.first:
            self.first = False
            return text
        return self.separator + text

    def flush(self) -> str:
        return ""


# BPE models skip clean_up_tokenization in transformers (tokenization_utils_tokenizers._decode);
# the others apply these replacements to the decoded text, in this order.
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _stages(spec: dict[str, Any] | None) -> tuple[list[Any], list[Any]]:
    """The decoder chain of a tokenizer.json as (per-token stages, text stages)."""
    if spec is None:
        return [], [_Join(" ")]
    chain = spec["decoders"] if spec.get("type") == "Sequence" else [spec]
    token_stages: list[Any] = []
    text_stages: list[Any] = []
    fused = False  # after Fuse the stages see one growing text
    for part in chain:
        kind = part.get("type")
        if kind == "Fuse":
            fused = True
            continue
        if kind == "Replace" and "String" in part.get("pattern", {}):
            pattern, content = part["pattern"]["String"], part["content"]
            (text_stages if fused else token_stages).append(
                _TextReplace(pattern, content) if fused else _TokenReplace(pattern, content))
        elif kind == "ByteFallback" and not fused:
            token_stages.append(_ByteFallback())
        elif kind == "Metaspace" and not fused:
            token_stages.append(
                _TokenMetaspace(part.get("replacement", "\u2581"), part.get("prepend_scheme", "always")))
        elif kind == "Strip" and not part.get("stop", 0) and len(part.get("content", " ")) == 1:
            stage = (_TextStrip if fused else _TokenStrip)(part["content"], int(part.get("start", 0)))
            (text_stages if fused else token_stages).append(stage)
        else:
            raise UnsupportedDecoder(f"the tokenizer's decoder step {json.dumps(part)} "
                                     "is not supported by ppvl-ocr's detokenizer")
    return token_stages, text_stages


class Detokenizer:
    """The checkpoint tokenizer's decoding, ready to stream (one per tokenizer)."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UnsupportedDecoder(f"{type(tokenizer).__name__} is not a `tokenizers` tokenizer; "
                                     "ppvl-ocr cannot decode with it")
        self.spec = json.loads(backend.to_str()).get("decoder")
        _stages(self.spec)  # fail now on a decoder we cannot stream
        self.cleanup = bool(getattr(tokenizer, "clean_up_tokenization_spaces", False)) and (
            type(backend.model).__name__ != "BPE"
            or getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False))
        size = max(vocab_size or 0, backend.get_vocab_size(with_added_tokens=True))
        # What tokenizers feeds its decoder for each id: the added token's content or the model's
        # piece; None for ids it does not know (they are dropped).
        self.pieces: list[str | None] = [backend.id_to_token(i) for i in range(size)]
        self._bytes: dict[int, bytes] = {}  # token_bytes, as asked

    def chain(self) -> _Chain:
        token_stages, text_stages = _stages(self.spec)
        if self.cleanup:
            text_stages += [_TextReplace(a, b) for a, b in _CLEANUP]
        return _Chain(self, token_stages, text_stages)

    def piece(self, token: int) -> str | None:
        return self.pieces[token] if 0 <= token < len(self.pieces) else None

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token stands for in the middle of a text (OpenAI logprobs' `bytes`): a
        byte-fallback token its byte, any other its string through the per-token stages (the
        metaspace a space); b"" for an id the tokenizer does not know. The bytes of an answer's
        tokens join to its text but for what the text stages change (a leading space cut)."""
        found = self._bytes.get(token)
        if found is None:
            found = self._bytes[token] = self._token_bytes(token)
        return found

    def _token_bytes(self, token: int) -> bytes:
        piece = self.piece(token)
        if piece is None:
            return b""
        pieces = [piece]
        for stage in self.chain().token_stages:
            byte = _ByteFallback.byte(pieces[0]) if isinstance(stage, _ByteFallback) and len(pieces) == 1 else None
            if byte is not None:
                return bytes([byte])
            if isinstance(stage, _TokenMetaspace):
                stage.seen = 1  # not the first token: the replacement stays a space
            pieces = [out for p in pieces for out in stage.push(p)]
        return "".join(pieces).encode()

    def decode(self, ids: Sequence[int]) -> str:
        chain = self.chain()
        return "".join(chain.push(t) for t in ids) + chain.flush()

    def stream(self, stop: Sequence[str] = ()) -> TextStream:
        return TextStream(self, stop)


class _Chain:
    """One sequence's pass through the stages: push a token, get the text that became final."""

    def __init__(self, detokenizer: Detokenizer, token_stages: list[Any], text_stages: list[Any]):
        self.detokenizer = detokenizer
        self.token_stages = token_stages
        self.text_stages = text_stages

    def _text(self, pieces: Iterable[str], flush: bool = False) -> str:
        out = []
        for piece in pieces:
            for stage in self.text_stages:
                piece = stage.push(piece)
            out.append(piece)
        if flush:
            tail = ""
            for stage in self.text_stages:
                tail = stage.push(tail) + stage.flush()
            out.append(tail)
        return "".join(out)

    def _tokens(self, pieces: Iterable[str], flush: bool = False) -> list[str]:
        pieces = list(pieces)
        for stage in self.token_stages:
            out: list[str] = []
            for p in pieces:
                out.extend(stage.push(p))
            if flush:
                out.extend(stage.flush())
            pieces = out
        return pieces

    def push(self, token: int) -> str:
        piece = self.detokenizer.piece(token)
        if piece is None:
            return ""
        return self._text(self._tokens([piece]))

    def flush(self) -> str:
        return self._text(self._tokens([], flush=True), flush=True)

    def peek(self) -> str:
        """What flush() would add now, leaving the chain as it is."""
        if not any(stage.holding() for stage in (*self.token_stages, *self.text_stages)):
            return ""
        token_stages = [copy.copy(s) for s in self.token_stages]
        return _Chain(self.detokenizer, token_stages, [copy.copy(s) for s in self.text_stages]).flush()


class TextStream:
    """One answer's text as it is generated, with stop strings.

    Generation stops at the first token after which the decoded text contains a stop string;
    the final text is the decoded text cut where the first one begins. `push` returns only text
    that no later token (or stop string) can change; `finish` returns the rest, so the deltas
    always join to `text`. Only the last few characters are kept apart (what may begin a stop
    string), so a token costs the same however long the answer is."""

    def __init__(self, detokenizer: Detokenizer, stop: Sequence[str] = ()):
        self.chain = detokenizer.chain()
        self.stops = [s for s in stop if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1  # characters a new match can reach back
        self.handed: list[str] = []  # deltas handed out
        self.held = ""  # final text not handed out: it may be the start of a stop string
        self.recent = ""  # the last `keep` characters of the final text, handed out or not
        self.stopped = False
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self.handed) + self.held

    def _hand(self, delta: str) -> str:
        if delta:
            self.handed.append(delta)
        return delta

    def push(self, token: int) -> str:
        delta = self.chain.push(token)
        if not self.stops:
            return self._hand(delta)
        # A stop string not seen before must end in the new text or in what is still pending.
        window = self.recent + delta + self.chain.peek()
        hits = [h for h in (window.find(s) for s in self.stops) if h >= 0]
        if hits:
            self.stopped = self.done = True
            start = len(self.recent) - len(self.held)  # where the held text begins in the window
            self.held = ""
            return self._hand(window[start:min(hits)])
        self.recent = (self.recent + delta)[-self.keep:] if self.keep else ""
        pending = self.held + delta
        cut = next((p for p in range(max(0, len(pending) - self.keep), len(pending))
                    if any(s.startswith(pending[p:]) for s in self.stops)), len(pending))
        self.held = pending[cut:]
        return self._hand(pending[:cut])

    def finish(self) -> str:
        """The rest of the text once generation ended (end of text, length, repetition)."""
        if self.done:
            return ""
        self.done = True
        rest, self.held = self.held + self.chain.flush(), ""
        return self._hand(rest)
