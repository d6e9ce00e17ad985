"""adcore's conformance kit (adcore-sdk) on the stfpm detector."""

from adcore_sdk.conformance import DetectorConformance


class TestStfpmConformance(DetectorConformance):
    detector = "stfpm"
    draws_at_random = True  # the run's seed must reach the method's random draws
    params = {"image_size": 64, "epochs": 3}  # noqa: RUF012 (read-only configuration)
