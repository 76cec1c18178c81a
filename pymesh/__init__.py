"""pymesh: a service-mesh proxy with a Rust data plane and a Python host.

The data plane is the compiled ``pymesh._core``; this package holds the configuration
models (:mod:`pymesh.config`), the host that applies them (:mod:`pymesh.host`), the CLI
(:mod:`pymesh.cli`) and, as ``pymesh.api``, the admin REST API.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pymesh")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
