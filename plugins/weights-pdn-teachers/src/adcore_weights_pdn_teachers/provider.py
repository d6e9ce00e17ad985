"""Serve the distilled EfficientAD teachers ``efficientad:pdn_small`` and ``efficientad:pdn_medium``.

Each is a PDN state dict (keys of ``adcore_efficientad.pdn.pdn(size)``, 384 output
channels) stored as fp16 safetensors inside this package, distilled by
``scripts/distill_teacher.py``; the file's metadata holds the whole recipe (backbone,
steps, crop, seed, time, held-out correlation), readable with :meth:`PdnTeachers.recipe`.
"""

from __future__ import annotations

from adcore import PackagedWeights

from adcore_weights_pdn_teachers.files import NAMES, TEACHERS


class PdnTeachers(PackagedWeights):
    """adcore resource provider for ``efficientad:<name>``: a float32 PDN ``state_dict``."""

    name = "pdn-teachers"
    prefix = "efficientad"
    folder = TEACHERS
    names = NAMES
    distribution = "adcore-weights-pdn-teachers"
