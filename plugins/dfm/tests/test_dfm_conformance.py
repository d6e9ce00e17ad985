"""adcore's conformance kit (adcore-sdk) on the dfm detector."""

from adcore_sdk.conformance import DetectorConformance


class TestDfmConformance(DetectorConformance):
    detector = "dfm"
    params = {"image_size": 64}  # noqa: RUF012 (read-only configuration)
