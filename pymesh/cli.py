"""The ``pymesh`` command line: ``run``, ``echo``, ``validate`` and ``bench``; the admin API
clients ``get``, ``apply``, ``diff``, ``rollback``, ``status`` and ``token`` live in
``pymesh.cli_admin``.

``run`` is the composition root: it builds the Core, the Host and the admin API, serves the
API with uvicorn in this process on a socket it binds itself, and turns SIGTERM/SIGINT into a
drain. Lines printed for people and scripts (``pymesh: admin listening on ...``,
``pymesh: listener NAME on IP:PORT``) are flushed at once. Invalid configuration is reported as
``loc: msg`` lines on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import socket
import sqlite3
import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import NamedTuple

import uvicorn
from pydantic import ValidationError

from pymesh import __version__, bench, cli_admin, policy_cli
from pymesh._core import Core
from pymesh.addresses import check_listen, format_host_port, split_host_port
from pymesh.client import ADMIN_URL_FILE
from pymesh.config import AdminConfig, MeshConfig, load_config, load_config_file
from pymesh.demo import DEFAULT_DEMO_LISTEN, build_demo, curl_lines
from pymesh.durations import format_duration
from pymesh.errors import ApplyError, ConfigError, CoreError
from pymesh.host import Host, default_data_dir, write_atomically
from pymesh.store import STORE_FILE, SqliteStore, StoredVersion
from pymesh.tokens import ENV_TOKEN, TokenSet, load_tokens

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_INVALID = 2
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; answer the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "echo":
        return _echo(args)
    if args.command == "bench":
        return bench.command(args)
    if args.command in cli_admin.COMMANDS:
        return cli_admin.run_command(args)
    if args.command == "policy":
        return policy_cli.command(args)
    return _validate(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pymesh", description="A service-mesh proxy with a Rust data plane."
    )
    parser.add_argument("--version", action="version", version=f"pymesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a proxy (without --config: the demo mesh)")
    run.add_argument("--config", metavar="FILE", help="YAML or JSON config file")
    run.add_argument("--admin", metavar="ADDR", help="admin API address (default 127.0.0.1:9901)")
    run.add_argument(
        "--data-dir",
        metavar="DIR",
        type=Path,
        help="where the config store (pymesh.db) and the admin tokens are kept "
        "(default $XDG_DATA_HOME/pymesh)",
    )
    run.add_argument("--workers", metavar="N", type=_positive_int, help="data-plane threads")
    run.add_argument(
        "--listen",
        metavar="ADDR",
        help=f"the demo listener's address (default {DEFAULT_DEMO_LISTEN}; demo only)",
    )

    echo = sub.add_parser("echo", help="run the built-in test upstream")
    echo.add_argument("--listen", metavar="ADDR", required=True, help="IP:PORT (port 0: any)")
    echo.add_argument("--id", metavar="NAME", help="server-id header value (default: address)")
    echo.add_argument("--workers", metavar="N", type=_positive_int, help="threads")

    validate = sub.add_parser("validate", help="check a config file; print ok or its errors")
    validate.add_argument("file", metavar="FILE")

    bench.add_arguments(sub.add_parser("bench", help="load-test a URL (the bundled generator)"))
    cli_admin.add_commands(sub)
    policy_cli.add_arguments(sub.add_parser("policy", help="explain effective traffic policies"))
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _say(line: str) -> None:
    print(line, flush=True)


def _complain(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _report_invalid(source: str, error: ConfigError) -> int:
    _complain(f"pymesh: invalid config {source}:")
    for line in error.lines():
        _complain(f"  {line}")
    return EXIT_INVALID


# === validate ===


def _validate(args: argparse.Namespace) -> int:
    try:
        load_config_file(args.file)
    except ConfigError as e:
        return _report_invalid(args.file, e)
    _say("ok")
    return EXIT_OK


# === echo ===


def _echo(args: argparse.Namespace) -> int:
    try:
        check_listen(args.listen)
    except ValueError as e:
        _complain(f"pymesh echo: --listen: {e}")
        return EXIT_INVALID
    # Block the stop signals before the core starts its threads (they inherit the mask), so
    # that sigwait below is the only place they are received.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        core = Core(args.workers)
        address = core.start_echo(args.listen, args.id)
    except ApplyError as e:
        _complain(f"pymesh echo: cannot listen on {args.listen}: {e}")
        return EXIT_INVALID
    except CoreError as e:
        _complain(f"pymesh echo: {e}")
        return EXIT_FAILURE
    _say(f"pymesh echo: {args.id or address} listening on {address}")
    signal.sigwait(_STOP_SIGNALS)
    core.drain(1.0)
    return EXIT_OK


# === run ===


def _run(args: argparse.Namespace) -> int:
    if args.config is not None and args.listen is not None:
        _complain("pymesh run: --listen sets the demo's listener; with --config, edit the file")
        return EXIT_INVALID
    data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
    source = args.config if args.config is not None else "(embedded demo)"
    # Until the event loop handles them, stop signals wait (pending); the core's threads,
    # started below, inherit this mask and never receive them.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        store = SqliteStore(data_dir / STORE_FILE)
        tokens, tokens_file = load_tokens(data_dir)
    except (OSError, sqlite3.Error) as e:
        _complain(f"pymesh: cannot use the data dir {data_dir}: {e}")
        return EXIT_FAILURE
    except ConfigError as e:
        return _report_invalid("(admin tokens)", e)
    try:
        plan = _plan_start(args, store.latest())
    except ConfigError as e:
        return _report_invalid(plan_source(args), e)
    source = plan.source_label or source

    try:
        core = Core(args.workers if args.workers is not None else plan.workers)
        cfg = plan.config
        if cfg is None:
            demo = build_demo(core, args.listen or DEFAULT_DEMO_LISTEN)
            cfg = demo.model_copy(update={"admin": plan.admin})
    except ConfigError as e:
        return _report_invalid(source, e)
    except ApplyError as e:  # a demo service could not bind
        return _report_invalid(source, ConfigError.single(e.path or "demo", str(e)))
    except CoreError as e:
        _complain(f"pymesh: the core failed to start: {e}")
        return EXIT_FAILURE

    try:
        sock = _bind(cfg.admin.listen)
    except OSError as e:
        msg = f"cannot listen on {cfg.admin.listen}: {e.strerror or e}"
        return _report_invalid(source, ConfigError.single("admin.listen", msg))

    host = Host(core, data_dir, store)
    try:
        if plan.kind == "resume" and plan.resume is not None:
            host.resume(plan.resume, cfg)
            _say(f"pymesh: resumed config version {host.version} from {data_dir / STORE_FILE}")
        else:
            host.apply(cfg, source=plan.kind)
    except ConfigError as e:
        sock.close()
        return _report_invalid(source, e)
    except CoreError as e:
        sock.close()
        _complain(f"pymesh: the core failed: {e}")
        return EXIT_FAILURE

    _announce(host, cfg, sock, data_dir, tokens_file, demo=plan.config is None)
    asyncio.run(_serve(host, tokens, sock, cfg))
    return EXIT_OK


def _announce(
    host: Host,
    cfg: MeshConfig,
    sock: socket.socket,
    data_dir: Path,
    tokens_file: Path | None,
    *,
    demo: bool,
) -> None:
    """Print where everything listens (and, for the demo, what to try); record the admin URL
    in the data dir for the CLI."""
    bound = host.listeners()
    for listener in cfg.listeners:
        _say(f"pymesh: listener {listener.name} on {bound.get(listener.name, listener.listen)}")
    ip, port = sock.getsockname()[:2]
    scheme = "https" if cfg.admin.tls is not None else "http"
    admin_url = f"{scheme}://{format_host_port(ip, port)}"
    _say(f"pymesh: admin listening on {admin_url}")
    if tokens_file is not None:
        _say(f"pymesh: admin token in {tokens_file}")
        auth = f'"Authorization: Bearer $(pymesh token --data-dir {shlex.quote(str(data_dir))})"'
    else:
        _say(f"pymesh: admin token from {ENV_TOKEN}")
        auth = f'"Authorization: Bearer ${ENV_TOKEN}"'
    with contextlib.suppress(OSError):
        write_atomically(data_dir / ADMIN_URL_FILE, admin_url + "\n")
    if demo:
        _say("pymesh: demo mesh ready (90% hello-v1, 10% hello-v2); try:")
        for line in curl_lines(bound["ingress"], admin_url, auth):
            _say(f"  {line}")


class _StartPlan(NamedTuple):
    """What ``pymesh run`` serves first: a config (None: build the demo), and how it came."""

    kind: str
    """``file`` (a new version from --config), ``resume`` (the store's latest, as it is),
    ``demo``."""
    config: MeshConfig | None
    admin: AdminConfig
    workers: int | None
    resume: StoredVersion | None
    source_label: str | None


def plan_source(args: argparse.Namespace) -> str:
    return str(args.config) if args.config is not None else "(stored config)"


def _plan_start(args: argparse.Namespace, latest: StoredVersion | None) -> _StartPlan:
    """Decide what to serve, the way kubectl and Envoy users expect:

    - ``--config FILE``: serve the file; it becomes a new version unless it equals the
      store's latest (then that version is resumed as it is);
    - no ``--config`` and a store that has versions: resume the latest (unless it is the
      demo, whose services live in the process: then start a new demo);
    - neither: the demo.
    """
    if args.config is not None:
        cfg = _with_admin_flag(load_config_file(args.config), args.admin)
        if latest is not None and _same(latest, cfg):
            return _StartPlan("resume", cfg, cfg.admin, cfg.workers, latest, None)
        return _StartPlan("file", cfg, cfg.admin, cfg.workers, None, None)
    if args.listen is not None:
        _flag("--listen", args.listen)
    if latest is not None and latest.source != "demo" and args.listen is None:
        cfg = _with_admin_flag(load_config(latest.config), args.admin)
        label = f"(stored version {latest.version})"
        return _StartPlan("resume", cfg, cfg.admin, cfg.workers, latest, label)
    admin = _with_admin_flag(MeshConfig(), args.admin).admin
    return _StartPlan("demo", None, admin, None, None, None)


def _same(stored: StoredVersion, cfg: MeshConfig) -> bool:
    try:
        return load_config(stored.config) == cfg
    except ConfigError:
        return False


def _with_admin_flag(cfg: MeshConfig, flag: str | None) -> MeshConfig:
    """``cfg`` with ``--admin`` (if given) as its admin address, checked like the file's."""
    if flag is None:
        return cfg
    listen = _flag("--admin", flag)
    try:
        admin = AdminConfig(listen=listen, tls=cfg.admin.tls)
    except ValidationError as e:
        msg = "; ".join(str(x["msg"]).removeprefix("Value error, ") for x in e.errors())
        raise ConfigError.single("--admin", msg) from None
    return cfg.model_copy(update={"admin": admin})


def _flag(flag: str, value: str) -> str:
    """A listen address given on the command line, checked like one in a config file."""
    try:
        return check_listen(value)
    except ValueError as e:
        raise ConfigError.single(flag, str(e)) from None


def _bind(address: str) -> socket.socket:
    """A listening TCP socket on ``address`` (IP literal and port; port 0: any)."""
    ip, port = split_host_port(address)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``pymesh run`` drains on signals itself, and
    uvicorn would re-raise a captured signal after shutdown (a non-zero exit).

    Its housekeeping ticks once a second, not ten times, and an exit wakes it at once:
    uvicorn's 0.1 s tick (for its ``Date`` header and ``should_exit``) is the admin API's
    only work on an idle loop, and it ran on the proxy's core. With the lease loop's 0.2 s
    sweep (api/app.py) it took 2.6 ms a second under load, 0.34% of the proxy's CPU; 0.4 ms
    now (perf stat per thread, h1-new-connection)."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit = asyncio.Event()
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._exit.set()
        else:
            self._exit.clear()

    async def main_loop(self) -> None:
        # uvicorn's on_tick refreshes the Date header when the counter is a multiple of 10.
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), 1.0)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29 used this name
        pass


async def _serve(host: Host, tokens: TokenSet, sock: socket.socket, cfg: MeshConfig) -> None:
    """Serve the admin API on ``sock`` until a stop signal has drained the core."""
    # The composition root is the one place api/ is wired in; imported here so that
    # `pymesh echo` and `pymesh validate` do not pay for importing FastAPI.
    from pymesh.api import create_app  # noqa: PLC0415

    tls = cfg.admin.tls
    config = uvicorn.Config(
        create_app(host, tokens),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=tls.cert if tls is not None else None,
        ssl_keyfile=tls.key if tls is not None else None,
    )
    drain_timeout = cfg.drain_timeout
    server = _Server(config)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    seconds, shown = drain_timeout.total_seconds(), format_duration(drain_timeout)

    async def drain() -> None:
        try:
            done = await asyncio.to_thread(host.drain, seconds)
        except CoreError as e:
            _complain(f"pymesh: drain failed: {e}")
        else:
            _say("pymesh: drained" if done else f"pymesh: drain timeout ({shown}) reached")
        finally:
            server.should_exit = True

    stopping = False

    def on_signal(sig: signal.Signals) -> None:
        nonlocal stopping
        if stopping:  # the drain is bounded by drain_timeout: let it end
            _say(f"pymesh: {sig.name}: already draining (up to {shown})")
            return
        stopping = True
        _say(f"pymesh: {sig.name}: draining (up to {shown})")
        host.begin_drain()
        task = loop.create_task(drain())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    try:
        await server.serve(sockets=[sock])
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    if not host.draining:  # the server stopped on its own: still let connections finish
        await asyncio.to_thread(host.drain, seconds)
