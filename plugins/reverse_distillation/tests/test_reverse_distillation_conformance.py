"""adcore's conformance kit (adcore-sdk) on the reverse_distillation detector."""

from adcore_sdk.conformance import DetectorConformance


class TestReverseDistillationConformance(DetectorConformance):
    detector = "reverse_distillation"
    draws_at_random = True  # the bottleneck's and decoder's initialisation follow the run's seed
    params = {"image_size": 64, "epochs": 8}  # noqa: RUF012 (read-only configuration)
