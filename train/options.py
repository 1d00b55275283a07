"""How messages name a config key: as the caller spelled it.

The same :class:`~train.config.TrainConfig` keys reach the data and training code from the command line
(``python -m train --image-size 32``) and from Python (``train.meta_train(data, out, image_size=32)``). An error that
says what to change must name what the caller can type: the flag, or the keyword. ``python -m train`` is the default;
:func:`python_spelling` switches to keywords for the duration of a Python entry point.

Example:
    >>> option("image_size", 32)
    '--image-size 32'
    >>> with python_spelling():
    ...     option("image_size", 32), option("families", ["gpt", "llama"])
    ('image_size=32', "families=['gpt', 'llama']")
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Iterator

__all__ = ["option", "python_spelling"]

# A context variable, not a global: it follows the caller (and threads started with its context, such as the
# prefetch thread), and concurrent callers of different kinds do not see each other's spelling.
_KEYWORDS: ContextVar[bool] = ContextVar("train_keyword_spelling", default=False)


def option(key: str, value: Any = None) -> str:
    """``key`` (with ``value``, if given) as the caller writes it: ``--image-size 32`` or ``image_size=32``."""
    if _KEYWORDS.get():
        return key if value is None else f"{key}={value!r}"
    flag = "--" + key.replace("_", "-")
    if value is None:
        return flag
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


@contextlib.contextmanager
def python_spelling() -> Iterator[None]:
    """Within this block, :func:`option` names keywords (``image_size=32``) rather than flags."""
    token = _KEYWORDS.set(True)
    try:
        yield
    finally:
        _KEYWORDS.reset(token)
