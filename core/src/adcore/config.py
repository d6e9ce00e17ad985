"""Converters and validators for detector configs, so values from JSON or the command line land typed.

``--param image_size=224`` arrives as an int and ``layers=1,2,3`` as a list; configs
store tuples so they compare and serialise the same way every time.
"""

from __future__ import annotations

from typing import Any

import attrs


def _split(value: Any) -> Any:
    """ "1,2,3" -> ["1", "2", "3"]; anything else unchanged."""
    return [part for part in value.split(",") if part.strip()] if isinstance(value, str) and "," in value else value


def to_size(value: Any) -> tuple[int, int]:
    """224 -> (224, 224); [256, 320] or "256,320" -> (256, 320)."""
    value = _split(value)
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return (int(value), int(value))
    size = tuple(int(v) for v in value)
    if len(size) != 2:
        raise ValueError(f"image size must be one number or (height, width), got {value!r}")
    return size


def to_int_tuple(value: Any) -> tuple[int, ...]:
    """3 -> (3,); [1, 2, 3] or "1,2,3" -> (1, 2, 3)."""
    value = _split(value)
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return (int(value),)
    return tuple(int(v) for v in value)


#: Validators for hyperparameters in a detector's attrs ``Config``: attrs' own, named for
#: reading (``attrs.field(default=1e-3, validator=positive)``); they raise ``ValueError``.
positive = attrs.validators.gt(0)
non_negative = attrs.validators.ge(0)
