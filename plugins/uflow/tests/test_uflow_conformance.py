"""adcore's conformance kit (adcore-sdk) on the uflow detector."""

from adcore_sdk.conformance import DetectorConformance


class TestUflowConformance(DetectorConformance):
    detector = "uflow"
    draws_at_random = True  # the run's seed must reach the method's random draws
    params = {"image_size": 64, "epochs": 2}  # noqa: RUF012 (read-only configuration)
