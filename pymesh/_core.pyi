"""Types of the compiled core, ``pymesh._core`` (Rust, PyO3). Checked by mypy.stubtest."""

from typing import Any, final

__all__ = [
    "ApplyError",
    "BindError",
    "Core",
    "CoreError",
    "Tap",
    "__version__",
    "access_log_fields",
    "access_log_template_error",
    "regex_error",
    "run_bench",
]

__version__: str

class CoreError(Exception):
    """The core failed for a reason that is not the caller's input (a bug, an I/O failure)."""

class ApplyError(ValueError):
    """A snapshot the core refused. ``path`` names the offending field; nothing was applied."""

    path: str

class BindError(ApplyError):
    """A listener address could not be bound (``path`` is ``listeners.N.listen``);
    nothing was applied."""

@final
class Core:
    """One data plane: its own tokio runtime, listeners, clusters and metrics.

    Every method that may wait releases the GIL.
    """

    def __new__(cls, workers: int | None = None) -> Core:
        """Start the runtime with ``workers`` threads (default: the number of CPUs)."""

    def apply(self, snapshot_json: str) -> int:
        """Compile and atomically swap in a snapshot; answer its version.

        New listeners are bound before the swap; listeners no longer named are drained.
        Raises ApplyError or BindError and keeps the old snapshot serving on failure.
        """

    def version(self) -> int:
        """The version of the snapshot now serving (0 before the first apply)."""

    def listeners(self) -> dict[str, str]:
        """Each listener's name and the address it is bound to (port 0 resolved)."""

    def stats_json(self) -> str:
        """Counters and gauges as a JSON object (see ``pymesh.host.Host.stats``)."""

    def metrics_text(self) -> str:
        """Prometheus text exposition of every metric, names prefixed ``pymesh_``."""

    def start_echo(self, listen: str, id: str | None = None) -> str:
        """Serve the test upstream on ``listen``; answer the bound address.

        ``id`` is sent in the ``server-id`` header of every response (default: the address).
        """

    def drain(self, timeout_s: float) -> bool:
        """Stop accepting on every listener and echo server, then wait up to ``timeout_s``
        for open connections to finish. Answer True if they all did."""

    def active_connections(self) -> int:
        """Downstream connections now open on proxy listeners."""

    def tap(
        self,
        *,
        listener: str | None = None,
        route: str | None = None,
        cluster: str | None = None,
        status: str | None = None,
        path_prefix: str | None = None,
    ) -> Tap:
        """Listen to the live tap: finished HTTP requests that every given filter takes
        (``status``: ``"503"`` or a class, ``"5xx"``). Raises ApplyError (``path`` is
        ``status``) for a bad status filter."""

    def tap_subscribers(self) -> int:
        """Live tap subscribers now listening."""

@final
class Tap:
    """One subscription to the live tap, with its own bounded queue: records that come while
    it is full are lost (counted), never waited for."""

    def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next request record, waiting up to ``timeout_s`` with the GIL released; None
        when none came in time or the tap is closed. Keys: time, listener, route, cluster,
        method, authority, path, status, flags, duration_ms, endpoint, attempts, trace_id,
        request_id."""

    def close(self) -> None:
        """Stop listening (idempotent)."""

def run_bench(
    url: str,
    *,
    connections: int = 10,
    threads: int = 1,
    duration_s: float | None = None,
    requests: int | None = None,
    rate: float | None = None,
    method: str = ...,
    headers: list[tuple[str, str]] = ...,
    body: bytes = ...,
    timeout_s: float = 10.0,
    warmup_s: float = 0.0,
    progress: bool = False,
    http2: bool = False,
    streams: int = 1,
    cacert: str | None = None,
    insecure: bool = False,
    cert: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """Run the load generator with the GIL released; see ``pymesh.bench.run``."""

def regex_error(pattern: str) -> str | None:
    """Why the core would refuse ``pattern`` as a route regex (anchored, ``regex`` crate
    syntax), or None if it compiles."""

def access_log_template_error(template: str) -> str | None:
    """Why the core would refuse ``template`` as an access-log text template (an unknown
    ``{field}``, an unmatched brace), or None if it compiles."""

def access_log_fields() -> list[str]:
    """The fields of an access-log line, by the names templates and JSON lines use."""
