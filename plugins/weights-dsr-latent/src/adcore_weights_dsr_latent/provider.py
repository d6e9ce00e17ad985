"""Serve DSR's discrete latent model ``dsr:vq_latent``.

A state dict of ``adcore_dsr.latent.DiscreteLatentModel`` (two-codebook VQ-VAE with the
general object appearance decoder) stored as fp16 safetensors inside this package, trained
by ``scripts/train_latent.py`` on ImageNet samples; the file's metadata holds the whole
recipe and the held-out numbers, readable with :meth:`DsrLatent.recipe`.
"""

from __future__ import annotations

from adcore import PackagedWeights

from adcore_weights_dsr_latent.files import NAMES, WEIGHTS


class DsrLatent(PackagedWeights):
    """adcore resource provider for ``dsr:<name>``: a float32 latent model ``state_dict``."""

    name = "dsr-latent"
    prefix = "dsr"
    folder = WEIGHTS
    names = NAMES
    distribution = "adcore-weights-dsr-latent"
