"""Serve DSR's discrete latent model ``dsr:vq_latent``.

A state dict of ``adcore_dsr.latent.DiscreteLatentModel`` (two-codebook VQ-VAE with the
general object appearance decoder) stored as fp16 safetensors inside this package, trained
by ``scripts/train_latent.py`` on ImageNet samples; the file's metadata holds the whole
recipe and the held-out numbers, readable with :meth:`DsrLatent.recipe`.
"""

from __future__ import annotations

import json

import torch
from adcore import ResourceNotFoundError
from safetensors import safe_open
from safetensors.torch import load_file

from adcore_weights_dsr_latent.files import NAMES, WEIGHTS, shipped


class DsrLatent:
    """adcore resource provider for ``dsr:<name>``: a float32 latent model ``state_dict``."""

    name = "dsr-latent"

    def resources(self) -> list[str]:
        return [f"dsr:{name}" for name in shipped()]

    def path(self, resource_id: str):
        name = resource_id.removeprefix("dsr:")
        if name not in NAMES:
            raise ValueError(f"{resource_id!r} is not served by dsr-latent; it serves {', '.join(NAMES)}")
        path = WEIGHTS / f"{name}.safetensors"
        if not path.is_file():
            raise ResourceNotFoundError(f"{path} is missing: reinstall adcore-weights-dsr-latent")
        return path

    def fetch(self, resource_id: str) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in load_file(str(self.path(resource_id))).items()}

    def recipe(self, resource_id: str) -> dict:
        """How the model was made (the training script's settings and results)."""
        with safe_open(str(self.path(resource_id)), framework="pt") as fh:
            return json.loads(fh.metadata()["recipe"])
