"""The compositional prompt ensemble of WinCLIP (Section 4.1 and the appendix of the paper).

A prompt is a template filled with a *state*: a state word phrase around the object's name.
Every normal state crossed with every template gives the normal prompts, every anomalous
state with every template the anomalous ones. Each class (normal, anomalous) is represented by
the average of its prompts' text embeddings: the "class prototypes" the image is compared with.
"""

from __future__ import annotations

#: State words of the paper: how a flawless and a defective object are described ({} = the object).
NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

#: Templates of the paper (CLIP's ImageNet templates adapted to inspection; {} = a state).
TEMPLATES: tuple[str, ...] = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


def compose_prompts(class_name: str, states: tuple[str, ...]) -> list[str]:
    """Every state (with ``class_name`` substituted) in every template, states outermost."""
    return [template.format(state.format(class_name)) for state in states for template in TEMPLATES]


def prompt_ensemble(class_name: str) -> tuple[list[str], list[str]]:
    """(normal prompts, anomalous prompts) for an object called ``class_name``."""
    return compose_prompts(class_name, NORMAL_STATES), compose_prompts(class_name, ANOMALOUS_STATES)
