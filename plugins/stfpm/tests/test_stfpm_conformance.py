"""adcore's conformance kit (adcore-sdk) on the stfpm detector."""

from adcore_sdk.conformance import DetectorConformance


class TestStfpmConformance(DetectorConformance):
    detector = "stfpm"
    params = {"image_size": 64, "epochs": 3}  # noqa: RUF012 (read-only configuration)
