"""adcore: a minimal visual anomaly-detection core; models arrive as plugins."""

from adcore.hookspecs import hookimpl

__version__ = "0.1.0"

#: Version of the plugin API. A plugin declares the range it supports with
#: ``ADCORE_API = ">=1,<2"`` style specifiers; incompatible plugins are refused.
API_VERSION = 1

__all__ = ["API_VERSION", "__version__", "hookimpl"]
