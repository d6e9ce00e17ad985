"""adcore's conformance kit (adcore-sdk) on the patchcore detector."""

from adcore_sdk.conformance import DetectorConformance


class TestPatchcoreConformance(DetectorConformance):
    detector = "patchcore"
    params = {"image_size": 64}  # noqa: RUF012 (read-only configuration)
