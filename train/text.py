"""Text corpora for language-model meta-training (``text:PATH``) and local Hugging Face tokenizers (``--tokenizer``).

A corpus is a text file or a directory of them (every regular, non-hidden file below it, in sorted path order; files
with NUL bytes in their first 8 KiB are binary and skipped, with a log line). Tokens are bytes (vocabulary 256) by
default, or the ids of a tokenizer saved with ``tokenizer.save_pretrained(DIR)`` (vocabulary ``len(tokenizer)``),
read offline from DIR.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ghn.errors import ConfigError

from .options import option

__all__ = ["corpus_files", "read_corpus", "load_tokenizer", "encode", "BYTE_VOCAB"]

logger = logging.getLogger(__name__)

BYTE_VOCAB = 256
_CHUNK = 1 << 20  # characters per tokenizer call: bounded memory on big corpora


def corpus_files(path: str | Path) -> list[Path]:
    """The files of a corpus (see the module docstring).

    Raises:
        ConfigError: the path is missing, a directory with no text files, or every file is empty.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{p} does not exist; text:PATH needs a text file or a directory of text files")
    if p.is_file():
        files = [p]
    else:
        files = []
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            if any(part.startswith(".") for part in f.relative_to(p).parts):
                continue
            with open(f, "rb") as fh:
                if b"\0" in fh.read(8192):
                    logger.info("%s looks binary (NUL bytes): left out of the corpus", f)
                    continue
            files.append(f)
        if not files:
            raise ConfigError(f"{p} holds no text files; put .txt (or other plain text) files in it")
    if all(f.stat().st_size == 0 for f in files):
        raise ConfigError(f"{p} is empty (no text to train on); point text:PATH at a file or directory with text")
    return files


def read_corpus(path: str | Path) -> bytes:
    """All bytes of the corpus at ``path``, files joined in order."""
    return b"".join(f.read_bytes() for f in corpus_files(path))


def load_tokenizer(directory: str | Path) -> Any:
    """A Hugging Face tokenizer saved in ``directory`` (``tokenizer.json`` or vocabulary files), loaded offline.

    Raises:
        ConfigError: the directory is missing or holds no tokenizer.
    """
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise ConfigError(f"{option('tokenizer', str(d))} is not a directory; pass a directory written by "
                          f"tokenizer.save_pretrained(DIR) (or omit {option('tokenizer')} for byte-level tokens)")
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ... for non-tokenizers
        raise ConfigError(f"{option('tokenizer', str(d))} is not a Hugging Face tokenizer directory "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); it needs tokenizer.json "
                          "(or vocab files) and tokenizer_config.json, as written by tokenizer.save_pretrained(DIR)"
                          ) from None
    if isinstance(tok, bool) or not hasattr(tok, "__len__") or len(tok) < 2:
        raise ConfigError(f"{option('tokenizer', str(d))} did not load as a tokenizer with a vocabulary; re-save "
                          "it with tokenizer.save_pretrained(DIR)")
    return tok


def encode(data: bytes, tokenizer: Any = None) -> torch.Tensor:
    """Token ids of ``data``: its bytes, or the tokenizer's ids of its UTF-8 text (undecodable bytes replaced),
    encoded in line-aligned chunks without special tokens.

    Shapes:
        returns ``(n,)`` int64.
    """
    if tokenizer is None:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    text = data.decode("utf-8", errors="replace")
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = len(text) if len(text) - start <= _CHUNK else text.rfind("\n", start, start + _CHUNK) + 1
        end = end if end > start else start + _CHUNK  # one very long line: cut it
        ids += tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        start = end
    return torch.tensor(ids, dtype=torch.long)
