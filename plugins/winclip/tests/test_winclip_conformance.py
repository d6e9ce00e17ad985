"""adcore's conformance kit on winclip, zero-shot and few-shot, with the tiny aligned CLIP file.

The kit's ``params`` must name files that exist only once the session fixture has written
them, so an autouse class fixture fills them in before the kit's own fixtures build anything.
"""

import pytest
from adcore.plugins import create_detector
from adcore_sdk.conformance import DetectorConformance


class TestWinCLIPZeroShotConformance(DetectorConformance):
    detector = "winclip"
    params = {}  # noqa: RUF012 (set from the tiny CLIP files below)

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _tiny_clip_params(cls, tiny_clip):
        cls.params = tiny_clip.params(class_name="object")


class TestWinCLIPFewShotConformance(DetectorConformance):
    detector = "winclip"
    params = {}  # noqa: RUF012 (set from the tiny CLIP files below)
    # The Engine draws the k references with the run's seed: another seed, another memory.
    draws_at_random = True

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _tiny_clip_params(cls, tiny_clip):
        cls.params = tiny_clip.params(class_name="object", k_shot=4)

    def test_card_describes_the_detector(self, conformance_registry):
        # One card per detector name, and it describes winclip's default (k_shot=0: zero-shot,
        # nothing to fit). A card cannot say "few-shot when k_shot > 0", so with k_shot=4 the
        # kit's check would compare the default's card with a few-shot instance. Checked
        # instead: the card matches the default, and k_shot makes the instance few-shot.
        card = conformance_registry.card(self.detector)
        default = create_detector(self.detector, registry=conformance_registry, **{**self.params, "k_shot": 0})
        few_shot = self.build(conformance_registry)
        assert (card.learning_type, card.training_kind) == (
            default.learning_type.value,
            default.training_spec.kind.value,
        ) == ("zero_shot", "none")
        assert (few_shot.learning_type.value, few_shot.training_spec.kind.value) == ("few_shot", "fit_once")
        assert few_shot.training_spec.max_images == 4
