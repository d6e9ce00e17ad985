"""adcore's conformance kit (adcore-sdk) on the cflow detector."""

from adcore_sdk.conformance import DetectorConformance


class TestCflowConformance(DetectorConformance):
    detector = "cflow"
    draws_at_random = True  # the run's seed must reach the method's random draws
    params = {"image_size": 64, "coupling_blocks": 4, "fiber_batch_size": 256, "epochs": 4, "learning_rate": 2e-3}  # noqa: RUF012 (read-only configuration)
