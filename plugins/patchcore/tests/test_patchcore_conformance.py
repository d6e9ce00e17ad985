"""adcore's conformance kit (adcore-sdk) on the patchcore detector."""

from adcore_sdk.conformance import DetectorConformance


class TestPatchcoreConformance(DetectorConformance):
    detector = "patchcore"
    draws_at_random = True  # the run's seed must reach the method's random draws
    params = {"image_size": 64}  # noqa: RUF012 (read-only configuration)
