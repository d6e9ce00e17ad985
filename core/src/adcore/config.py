"""Detector configs: converters, validators and the one vocabulary of parameter names.

``--param image_size=224`` arrives as an int and ``layers=1,2,3`` as a list; configs
store tuples so they compare and serialise the same way every time. Validators raise
``ValueError`` naming the field. :data:`PARAMETER_ALIASES` maps names used by earlier
versions (and by other frameworks) to adcore's one name for the same idea, so old
checkpoints and command lines keep working.
"""

from __future__ import annotations

import warnings
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
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"image size must be one number or (height, width), got {value!r}") from None
    if len(size) != 2:
        raise ValueError(f"image size must be one number or (height, width), got {value!r}")
    return size


def to_int_tuple(value: Any) -> tuple[int, ...]:
    """3 -> (3,); [1, 2, 3] or "1,2,3" -> (1, 2, 3)."""
    value = _split(value)
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        return (int(value),)
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"expected integers like 1,2,3, got {value!r}") from None


def to_bool(value: Any) -> bool:
    """True/False, 1/0 and "true"/"false" (command lines), nothing else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise ValueError(f"expected true or false, got {value!r}")


def to_float_range(value: Any) -> tuple[float, float]:
    """``"0.2,1"`` or ``[0.2, 1]`` -> ``(0.2, 1.0)``: a (low, high) pair, low <= high."""
    if isinstance(value, str):
        value = [float(v) for v in value.split(",") if v.strip()]
    low, high = (float(v) for v in value)
    if low > high:
        raise ValueError(f"expected a range low,high with low <= high, got {value!r}")
    return (low, high)


# -- validators (attrs' signature: instance, attribute, value) ------------------------------
def multiple_of(factor: int):
    """Every entry of an int or a size tuple is a multiple of ``factor`` (networks that halve the image)."""

    def check(_instance, attribute, value) -> None:
        sizes = value if isinstance(value, tuple) else (value,)
        if any(s % factor for s in sizes):
            raise ValueError(f"{attribute.name} must be a multiple of {factor}, got {value!r}")

    return check


def at_least(minimum: float):
    """``value >= minimum``."""

    def check(_instance, attribute, value) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, got {value!r}")

    return check


def positive(_instance, attribute, value) -> None:
    """``value > 0``."""
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def non_negative(_instance, attribute, value) -> None:
    """``value >= 0``."""
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def unit_interval(_instance, attribute, value) -> None:
    """``0 <= value <= 1``."""
    if not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be in [0, 1], got {value!r}")


def one_of(*choices: Any):
    """The value is one of ``choices``."""

    def check(_instance, attribute, value) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(map(repr, choices))}, got {value!r}")

    return check


def distinct_levels(_instance, attribute, value) -> None:
    """A non-empty tuple of distinct, non-negative backbone levels."""
    if not value:
        raise ValueError(f"{attribute.name} must name at least one backbone level")
    if len(set(value)) != len(value):
        raise ValueError(f"{attribute.name} must be distinct, got {value}")
    if min(value) < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


# -- one vocabulary ------------------------------------------------------------------------
#: Old or foreign name -> adcore's name. Applied to any detector whose Config has the new
#: name and not the old one (command lines, checkpoints of earlier versions).
PARAMETER_ALIASES: dict[str, str] = {
    "lr": "learning_rate",
    "flow_steps": "coupling_blocks",
    "n_coupling_blocks": "coupling_blocks",
    "clamp_alpha": "affine_clamp",
    "clamp": "affine_clamp",
    "num_nearest_neighbors": "num_neighbors",
}

#: Parameters that no longer exist; a checkpoint may still carry them (the value is ignored).
RETIRED_PARAMETERS: dict[str, str] = {
    "seed": "the random draws follow the run's seed (--seed / create_detector(seed=...))",
}


def canonical_parameters(config_class: type, values: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Rename aliases to the Config's names; drop retired ones; refuse unknown ones.

    ``strict=False`` (checkpoints) drops retired parameters silently; otherwise they are an
    error naming what replaced them.
    """
    known = {f.name for f in attrs.fields(config_class)}
    renamed: dict[str, Any] = {}
    for key, value in values.items():
        target = PARAMETER_ALIASES.get(key, key)
        if key not in known and target in known:
            if strict:
                warnings.warn(f"parameter '{key}' is now called '{target}'", DeprecationWarning, stacklevel=3)
            key = target
        elif key not in known and key in RETIRED_PARAMETERS:
            if strict:
                raise ValueError(f"parameter '{key}' no longer exists: {RETIRED_PARAMETERS[key]}")
            continue
        if key in renamed:
            raise ValueError(f"parameter '{key}' is given twice (once under an old name)")
        renamed[key] = value
    unknown = sorted(set(renamed) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
    return renamed


_SCALARS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}


def _coerce(field: attrs.Attribute, value: Any) -> Any:
    """Values of plain ``int``/``float``/``bool``/``str`` fields, typed (fields with a converter convert themselves)."""
    if field.converter is not None or field.type is None:
        return value
    # Annotations are strings under ``from __future__ import annotations``, else types.
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", repr(field.type))
    if not isinstance(field.type, str) and "|" in repr(field.type):
        annotation = repr(field.type).replace("NoneType", "None")
    kinds = [part.strip() for part in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    kind = next((k for k in kinds if k in _SCALARS), None)
    if kind is None or len([k for k in kinds if k != "None"]) != 1:
        return value
    try:
        if kind == "bool":
            return to_bool(value)
        if kind == "str":
            if isinstance(value, str):
                return value
        elif isinstance(value, bool):
            pass
        elif kind == "int" and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return int(value)
        elif kind == "int" and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        elif kind == "float" and isinstance(value, (int, float, str)):
            return float(value)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{field.name} must be {_SCALARS[kind]}, got {value!r}")


def build_config(config_class: type, values: dict[str, Any], owner: str, strict: bool = True) -> Any:
    """The Config from JSON/command-line values, with every problem as one ValueError naming the owner."""
    try:
        values = canonical_parameters(config_class, values, strict)
        fields = {f.name: f for f in attrs.fields(config_class)}
        return config_class(**{key: _coerce(fields[key], value) for key, value in values.items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{owner}: {exc}") from None
