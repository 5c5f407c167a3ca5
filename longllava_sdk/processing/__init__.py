"""Text and image processing: the tag protocol, chat template, tokenizer and processor."""

from .processor import IGNORE_INDEX, EncodedSample, LongLLaVAProcessor
from .tokenizer import build_tokenizer

__all__ = ["IGNORE_INDEX", "EncodedSample", "LongLLaVAProcessor", "build_tokenizer"]
