"""The documented import path of the library API (README "Library use"):
`from ppvl_batch.recognizer import Recognizer`. The code lives in engine/recognizer.py; the
package itself imports it from there."""

from .engine.recognizer import TASKS, DecoderError, EncodedPage, PageResult, Recognizer, Sampling

__all__ = ["TASKS", "PageResult", "EncodedPage", "Recognizer", "Sampling", "DecoderError"]
