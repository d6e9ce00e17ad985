"""A card per detector: what it is, where it comes from, how it learns, what it measured.

A plugin registers its card instead of its class (``register(CARD)``), so listing the
installed detectors imports no model code and no torch; the class is imported from
``card.target`` when a detector is first built. ``adcore list-plugins --json`` shows the
cards and every checkpoint stores its detector's card.
"""

from __future__ import annotations

import importlib
from typing import Any

import attrs


@attrs.frozen
class DetectorCard:
    """Facts about one detector. ``results`` holds measured numbers by dataset, e.g.
    ``{"mvtec_ad/bottle": {"image_auroc": 0.996, "pixel_auroc": 0.981}}``, with the conditions
    under ``"conditions"`` (backbone, image size, machine)."""

    name: str
    #: ``"package.module:ClassName"``: imported only when the detector is built.
    target: str
    summary: str = ""
    paper: str = ""
    paper_url: str = ""
    licence: str = "Apache-2.0"
    learning_type: str = "one_class"  # one_class | few_shot | zero_shot
    training_kind: str = "fit_once"  # fit_once | gradient | none
    default_image_size: tuple[int, int] = (256, 256)
    results: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        module, sep, attribute = self.target.partition(":")
        if not (module and sep and attribute):
            raise ValueError(f"card '{self.name}': target must look like 'package.module:ClassName', got {self.target!r}")

    def load(self) -> type:
        """Import the detector class."""
        module_name, _, attribute = self.target.partition(":")
        detector_class = getattr(importlib.import_module(module_name), attribute)
        if getattr(detector_class, "name", None) != self.name:
            raise ValueError(
                f"card '{self.name}' points at {self.target}, whose name is {getattr(detector_class, 'name', None)!r}"
            )
        return detector_class

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["default_image_size"] = list(self.default_image_size)
        return data


def card_of_class(detector_class: type) -> DetectorCard:
    """A minimal card for a class registered directly (API 1 style)."""
    card = getattr(detector_class, "card", None)
    if isinstance(card, DetectorCard):
        return card
    learning_type = getattr(getattr(detector_class, "learning_type", None), "value", "one_class")
    if learning_type == "zero_shot":
        training_kind = "none"
    else:  # without an instance the spec is unknown: a class that defines training_step trains with gradients
        base_step = next((c.__dict__["training_step"] for c in reversed(detector_class.__mro__) if "training_step" in c.__dict__), None)
        own_step = getattr(detector_class, "training_step", None)
        training_kind = "gradient" if own_step is not None and own_step is not base_step else "fit_once"
    return DetectorCard(
        name=detector_class.name,
        target=f"{detector_class.__module__}:{detector_class.__qualname__}",
        summary=(detector_class.__doc__ or "").strip().splitlines()[0] if detector_class.__doc__ else "",
        learning_type=learning_type,
        training_kind=training_kind,
    )
