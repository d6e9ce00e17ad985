"""adcore-sdk: tools for people who publish adcore detector plugins.

- ``adcore-sdk new NAME`` writes a complete, working plugin package (``adcore_sdk.scaffold``);
- ``adcore_sdk.conformance.DetectorConformance`` is the conformance kit, a pytest test
  class whose checks every detector must pass (its fixtures come through ``pytest11``).
"""

__version__ = "0.1.0"
