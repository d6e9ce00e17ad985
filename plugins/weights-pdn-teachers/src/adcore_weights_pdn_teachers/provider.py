"""Serve the distilled EfficientAD teachers ``efficientad:pdn_small`` and ``efficientad:pdn_medium``.

Each is a PDN state dict (keys of ``adcore_efficientad.pdn.pdn(size)``, 384 output
channels) stored as fp16 safetensors inside this package, distilled by
``scripts/distill_teacher.py``; the file's metadata holds the whole recipe (backbone,
steps, crop, seed, time, held-out correlation), readable with :meth:`PdnTeachers.recipe`.
"""

from __future__ import annotations

import json

import torch
from adcore import ResourceNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file

from adcore_weights_pdn_teachers.files import NAMES, TEACHERS, shipped_teachers


class PdnTeachers:
    """adcore resource provider for ``efficientad:<name>``: a float32 PDN ``state_dict``."""

    name = "pdn-teachers"

    def resources(self) -> list[str]:
        return [f"efficientad:{name}" for name in shipped_teachers()]

    def path(self, resource_id: str):
        name = resource_id.removeprefix("efficientad:")
        if name not in NAMES:
            raise ValueError(f"{resource_id!r} is not served by pdn-teachers; it serves {', '.join(NAMES)}")
        path = TEACHERS / f"{name}.safetensors"
        if not path.is_file():
            raise ResourceNotFoundError(f"{path} is missing: reinstall adcore-weights-pdn-teachers")
        return path

    def fetch(self, resource_id: str) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in load_file(str(self.path(resource_id))).items()}

    def recipe(self, resource_id: str) -> dict:
        """How the teacher was made (the distillation script's settings and results)."""
        with safe_open(str(self.path(resource_id)), framework="pt") as fh:
            return json.loads(fh.metadata()["recipe"])
