"""Features of a frozen network, computed once per image and reused across epochs.

Gradient-trained models with a frozen part (STFPM's teacher, the frozen encoders of flow
and distillation models) would otherwise recompute identical features every epoch. The
cache is keyed by image path, so it is only valid for un-augmented inputs; it stops adding
entries once ``max_bytes`` is reached and simply computes the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class FrozenFeatureCache:
    """Wraps ``extract(images) -> list[Tensor]`` of a frozen module with a per-image cache."""

    def __init__(self, extract: Callable[[torch.Tensor], list[torch.Tensor]], max_bytes: int = 2 * 1024**3) -> None:
        self.extract = extract
        self.max_bytes = max_bytes
        self._entries: dict[str, list[torch.Tensor]] = {}
        self._bytes = 0
        self._format = torch.contiguous_format

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __call__(self, images: torch.Tensor, keys: Sequence[str]) -> list[torch.Tensor]:
        """Features of ``images`` (one key per image), from the cache where possible."""
        missing = [i for i, key in enumerate(keys) if key not in self._entries]
        if missing:
            computed = self.extract(images[missing])
            self._format = (
                torch.channels_last
                if computed[0].dim() == 4 and computed[0].is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
            for row, index in enumerate(missing):
                # Clone: a slice would keep the whole batch's storage alive.
                per_image = [level[row].clone() for level in computed]
                size = sum(t.numel() * t.element_size() for t in per_image)
                if self._bytes + size > self.max_bytes:  # budget reached: stop caching
                    return computed if len(missing) == len(keys) else self.extract(images)
                self._entries[keys[index]] = per_image
                self._bytes += size
        levels = len(self._entries[keys[0]])
        # Stack into the layout the network produced (channels-last for adcore's backbones).
        return [
            torch.stack([self._entries[key][level] for key in keys]).contiguous(memory_format=self._format)
            for level in range(levels)
        ]
