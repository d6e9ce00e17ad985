"""adcore's conformance kit (adcore-sdk) on the fastflow detector."""

from adcore_sdk.conformance import DetectorConformance


class TestFastflowConformance(DetectorConformance):
    detector = "fastflow"
    params = {"image_size": 64, "epochs": 2}  # noqa: RUF012 (read-only configuration)
