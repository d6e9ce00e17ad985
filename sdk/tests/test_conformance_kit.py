"""The conformance kit fails loudly on broken detectors: one broken detector per check.

Each detector below is a small working one (per-pixel mean of pooled training images,
distance map) with exactly one defect. The kit runs against all of them in a pytester
session; every check must fail for its broken detector, naming the problem, and pass for
the working one (so a failure is the defect's doing, not the kit's).
"""

import pytest

DETECTORS = """
import attrs, os, torch
import torch.nn.functional as F
from adcore import AnomalyDetector, DetectorCard, DetectorOutput, InputSpec, hookimpl
from adcore_sdk.conformance import DetectorConformance


@attrs.define
class Config:
    image_size: tuple = (32, 32)


class Good(AnomalyDetector):
    name = "good"
    Config = Config

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.register_buffer("mean", torch.empty(0))

    @property
    def input_spec(self):
        return InputSpec(tuple(self.config.image_size))

    def pooled(self, images):
        return F.avg_pool2d(images.float(), 4)

    def fit_begin(self):
        self._parts = []

    def fit_batch(self, batch):
        self._parts.append(self.pooled(batch.image))

    def fit_end(self):
        if not self._parts:
            raise ValueError(f"{self.name}: no training images")
        self.mean = torch.cat(self._parts).mean(dim=0)

    def distance(self, images):
        return (self.pooled(images) - self.mean).square().sum(dim=1, keepdim=True)

    def forward(self, images):
        anomaly_map = F.interpolate(self.distance(images), size=images.shape[-2:], mode="bilinear")
        return DetectorOutput.from_map(anomaly_map)


class FitFails(Good):
    name = "fit-fails"

    def fit_end(self):
        raise RuntimeError("statistics overflow")


class WrongMapSize(Good):
    name = "wrong-map-size"

    def forward(self, images):
        distance = self.distance(images)  # forgot to upsample to the image
        return DetectorOutput(pred_score=distance.flatten(1).amax(dim=1), anomaly_map=distance)


class Unseeded(Good):
    name = "unseeded"

    def fit_end(self):
        super().fit_end()
        noise = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
        self.mean = self.mean + 0.01 * torch.rand(self.mean.shape, generator=noise)


class StateOutsideBuffers(Good):
    name = "state-outside-buffers"

    def fit_end(self):
        super().fit_end()
        self.scale = float(self.mean.std()) + 0.5  # learned, but not a buffer

    def distance(self, images):
        return super().distance(images) / getattr(self, "scale", 1.0)


class Blind(Good):
    name = "blind"

    def distance(self, images):
        return torch.ones_like(self.pooled(images)[:, :1])


class AnyChannels(Good):
    name = "any-channels"

    def check_images(self, images):
        pass

    def distance(self, images):
        pooled = self.pooled(images).mean(dim=1, keepdim=True)
        return (pooled - self.mean.mean(dim=0, keepdim=True)).square()


class NaNsPass(Good):
    name = "nans-pass"

    def check_images(self, images):
        if images.shape[1] != 3:
            raise ValueError("expected 3 channels")


class FitsOnNothing(Good):
    name = "fits-on-nothing"

    def fit_end(self):
        self.mean = torch.cat(self._parts).mean(dim=0) if self._parts else torch.zeros(3, 8, 8)


class NoFitCheck(Good):
    name = "no-fit-check"

    def check_fitted(self):
        pass

    def fit_begin(self):
        super().fit_begin()

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self.mean = torch.zeros(3, 8, 8)


class WrongCard(Good):
    name = "wrong-card"


class SeedIgnored(Good):
    # Draws a random offset from a fixed generator: the run's seed never reaches it.
    name = "seed-ignored"

    def fit_end(self):
        super().fit_end()
        self.mean = self.mean + 0.01 * torch.rand(self.mean.shape, generator=torch.Generator().manual_seed(7))


class SeedUsed(SeedIgnored):
    name = "seed-used"

    def fit_end(self):
        Good.fit_end(self)
        self.mean = self.mean + 0.01 * torch.rand(self.mean.shape)  # torch's generator: the Engine seeds it


class ZeroShot(Good):
    # Needs no fit: brightness against a fixed prior (a zero-shot detector's shape).

    name = "zero-shot"

    @property
    def training_spec(self):
        from adcore import TrainingSpec

        return TrainingSpec.nothing()

    def fit_end(self):
        pass

    def distance(self, images):
        return self.pooled(images).mean(dim=1, keepdim=True)


class Plugin:
    ADCORE_API = ">=2,<3"

    @hookimpl
    def adcore_register_detectors(self, register):
        for cls in (Good, FitFails, WrongMapSize, Unseeded, StateOutsideBuffers, Blind, AnyChannels, NaNsPass, FitsOnNothing, NoFitCheck):
            register(cls)
        register(DetectorCard(name="zero-shot", target=f"{__name__}:ZeroShot", training_kind="none"))
        register(SeedIgnored)
        register(SeedUsed)
        # Says it trains with gradients; it fits in one pass.
        register(DetectorCard(name="wrong-card", target=f"{__name__}:WrongCard", training_kind="gradient"))


def suite(detector_name, random=False):
    class Suite(DetectorConformance):
        detector = detector_name
        plugin = Plugin()
        draws_at_random = random
    return Suite


TestGood = suite("good")
TestUndiscoverable = suite("not-registered-anywhere")
TestFitFails = suite("fit-fails")
TestWrongMapSize = suite("wrong-map-size")
TestUnseeded = suite("unseeded")
TestStateOutsideBuffers = suite("state-outside-buffers")
TestBlind = suite("blind")
TestAnyChannels = suite("any-channels")
TestNaNsPass = suite("nans-pass")
TestFitsOnNothing = suite("fits-on-nothing")
TestNoFitCheck = suite("no-fit-check")
TestWrongCard = suite("wrong-card")
TestZeroShot = suite("zero-shot")
TestSeedIgnored = suite("seed-ignored", random=True)
TestSeedUsed = suite("seed-used", random=True)
"""

#: broken detector's test class -> (the check that must fail, text its failure must show)
EXPECTED = {
    "TestUndiscoverable": ("test_is_discoverable", "no plugin registers a detector named 'not-registered-anywhere'"),
    "TestFitFails": ("test_fits_on_a_tiny_dataset", "statistics overflow"),
    "TestWrongMapSize": ("test_outputs_have_documented_shapes_dtypes_and_ranges", "anomaly_map must be (N, 1, H, W)"),
    "TestUnseeded": ("test_same_seed_gives_same_scores", "two fits with seed 0 disagree"),
    "TestStateOutsideBuffers": (
        "test_checkpoint_round_trip_gives_identical_scores",
        "scores change after a checkpoint round trip",
    ),
    "TestBlind": (
        "test_obvious_defects_score_above_normal_images",
        "images with a white square should score above normal ones",
    ),
    "TestAnyChannels": ("test_rejects_a_wrong_channel_count", "DID NOT RAISE"),
    "TestNaNsPass": ("test_rejects_nan_input", "DID NOT RAISE"),
    "TestFitsOnNothing": ("test_rejects_an_empty_training_set", "DID NOT RAISE"),
    "TestNoFitCheck": ("test_unfitted_detector_refuses_to_score", "DID NOT RAISE"),
    "TestWrongCard": ("test_card_describes_the_detector", "card says training_kind 'gradient'"),
    "TestSeedIgnored": ("test_another_seed_changes_what_is_random", "the run's seed does not reach the random draws"),
}


@pytest.fixture
def outcomes(pytester):
    pytester.makepyfile(test_broken_detectors=DETECTORS)
    recorder = pytester.inline_run("-p", "no:cacheprovider")
    results: dict[str, dict[str, tuple[str, str]]] = {}
    for report in recorder.getreports("pytest_runtest_logreport"):
        if report.when != "call" and report.passed:
            continue
        _, cls, test = report.nodeid.split("::")
        test = test.split("[")[0]
        previous = results.setdefault(cls, {}).get(test)
        if previous is None or previous[0] == "passed":
            results[cls][test] = (report.outcome, report.longreprtext)
    return results


def test_every_check_fails_for_its_broken_detector_and_passes_for_a_working_one(outcomes):
    zero_shot = outcomes["TestZeroShot"]  # the kit's zero-shot variant passes a working zero-shot detector
    assert zero_shot and all(outcome in ("passed", "skipped") for outcome, _ in zero_shot.values()), {
        test: text[-800:] for test, (outcome, text) in zero_shot.items() if outcome not in ("passed", "skipped")
    }
    seeded = outcomes["TestSeedUsed"]  # a detector whose random draws follow the seed passes check 9
    assert seeded and all(outcome == "passed" for outcome, _ in seeded.values()), {
        test: text[-800:] for test, (outcome, text) in seeded.items() if outcome != "passed"
    }
    good = outcomes["TestGood"]  # draws nothing at random: check 9 is skipped, every other passes
    assert good and all(outcome in ("passed", "skipped") for outcome, _ in good.values()), {
        test: text[-800:] for test, (outcome, text) in good.items() if outcome not in ("passed", "skipped")
    }
    checks = set(good)
    assert {check for check, _ in EXPECTED.values()} == checks, "every check of the kit has a broken detector"
    for cls, (check, message) in EXPECTED.items():
        outcome, text = outcomes[cls][check]
        assert outcome == "failed", f"{cls}: {check} should fail, got {outcome}"
        assert message in text, f"{cls}: {check} failed without saying {message!r}:\n{text[-1500:]}"
