"""A resource provider for network weights shipped inside a plugin package as safetensors files.

Weights-provider plugins (EfficientAd's PDN teachers, DSR's latent model) all do the same
thing: serve ``<prefix>:<name>`` from ``<folder>/<name>.safetensors`` inside the installed
package, as a float32 ``state_dict``, with the recipe that made the file (a JSON string under
the safetensors metadata key ``recipe``) readable without loading the tensors. A provider
subclasses :class:`PackagedWeights` and sets its class attributes; torch and safetensors are
imported only when a file is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from adcore.resources import ResourceNotFoundError


class PackagedWeights:
    """Serves ``f"{prefix}:{name}"`` for every ``name`` in ``names`` whose file is in ``folder``."""

    #: The provider's name in ``adcore list-plugins``.
    name: ClassVar[str] = ""
    #: Resource ids are ``<prefix>:<name>``.
    prefix: ClassVar[str] = ""
    #: The package folder holding ``<name>.safetensors``.
    folder: ClassVar[Path] = Path()
    names: ClassVar[tuple[str, ...]] = ()
    #: The distribution to reinstall when a file is missing.
    distribution: ClassVar[str] = ""

    @classmethod
    def shipped(cls) -> list[str]:
        """The names whose file is present (no torch import: plugins call it at discovery)."""
        return [name for name in cls.names if (cls.folder / f"{name}.safetensors").is_file()]

    def resources(self) -> list[str]:
        return [f"{self.prefix}:{name}" for name in self.shipped()]

    def path(self, resource_id: str) -> Path:
        name = resource_id.removeprefix(f"{self.prefix}:")
        if name not in self.names:
            raise ValueError(f"{resource_id!r} is not served by {self.name}; it serves {', '.join(self.names)}")
        path = self.folder / f"{name}.safetensors"
        if not path.is_file():
            raise ResourceNotFoundError(f"{path} is missing: reinstall {self.distribution}")
        return path

    def fetch(self, resource_id: str) -> dict[str, Any]:
        """The file's tensors as float32 (files may be stored in fp16)."""
        from safetensors.torch import load_file

        return {key: value.float() for key, value in load_file(str(self.path(resource_id))).items()}

    def recipe(self, resource_id: str) -> dict:
        """How the file was made: the training script's settings and results."""
        from safetensors import safe_open

        with safe_open(str(self.path(resource_id)), framework="pt") as handle:
            return json.loads((handle.metadata() or {}).get("recipe", "{}"))
