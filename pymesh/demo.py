"""The embedded demo mesh (``pymesh run`` without ``--config``).

Two demo services, hello-v1 and hello-v2 (the core's echo upstream, which answers with a
``server-id`` header), on loopback ports the OS picks, and a listener ``ingress`` that sends
90% of requests to hello-v1 and 10% to hello-v2.
"""

from __future__ import annotations

from pymesh._core import Core
from pymesh.config import MeshConfig, load_config

__all__ = ["DEFAULT_DEMO_LISTEN", "build_demo", "curl_lines"]

DEFAULT_DEMO_LISTEN = "127.0.0.1:8080"
"""Where the demo's listener accepts connections unless ``--listen`` says otherwise."""

_SERVICES = {"hello-v1": 90, "hello-v2": 10}


def build_demo(core: Core, listen: str = DEFAULT_DEMO_LISTEN) -> MeshConfig:
    """Start the demo services on ``core`` and answer the config that routes to them."""
    clusters = [
        {"name": name, "endpoints": [core.start_echo("127.0.0.1:0", name)]} for name in _SERVICES
    ]
    return load_config(
        {
            "listeners": [
                {
                    "name": "ingress",
                    "listen": listen,
                    "routes": [
                        {
                            "name": "hello",
                            "to": [
                                {"cluster": name, "weight": weight}
                                for name, weight in _SERVICES.items()
                            ],
                        }
                    ],
                }
            ],
            "clusters": clusters,
        }
    )


def curl_lines(listener_address: str, admin_url: str, auth_header: str) -> list[str]:
    """Three commands to try against a running demo; ``auth_header`` is the shell word for
    curl's ``-H`` that sends the admin token."""
    return [
        f"for i in $(seq 10); do curl -si http://{listener_address}/ | grep -i server-id; done",
        f"curl -s -H {auth_header} {admin_url}/config",
        f"curl -s -H {auth_header} {admin_url}/stats",
    ]
