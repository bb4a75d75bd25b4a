"""``gearstore`` command: run the server, or ``gearstore db …`` maintenance commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from gearstore import logs
from gearstore.config import Config, ConfigError, parse_args
from gearstore.stores.base import StoreError

log = logging.getLogger("gearstore")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gearstore`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["db"]:
        from gearstore.db_cli import main as db_main

        return db_main(args[1:])
    try:
        config, namespace = parse_args(args)
    except ConfigError as exc:
        print(f"gearstore: error: {exc}", file=sys.stderr)
        return 2
    if namespace.print_config:
        print(json.dumps(config.masked(), indent=2, sort_keys=True))
        return 0
    return run(config)


def run(config: Config) -> int:
    """Run the server until SIGTERM/SIGINT or admin ``shutdown``."""
    try:
        logs.configure(config.verbose, config.log_file, config.log_format)
    except OSError as exc:
        print(f"gearstore: error: cannot open log file {config.log_file}: {exc}", file=sys.stderr)
        return 2
    if config.threads:
        log.info("--threads %d ignored: gearstore runs one event loop", config.threads)
    if config.file_descriptors:
        _raise_fd_limit(config.file_descriptors)
    if config.daemon:
        _daemonize()
    runner: Callable[[Coroutine[Any, Any, int]], int] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        pass
    try:
        return runner(_serve(config))
    except KeyboardInterrupt:
        return 0


async def _serve(config: Config) -> int:
    from gearstore.server.server import Server

    server = Server(config)
    try:
        await server.start()
    except StoreError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc.strerror or exc)
        return 1
    if config.user:
        _drop_privileges(config.user)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, server, signum)
    if config.pid_file:
        try:
            with open(config.pid_file, "w") as fh:
                fh.write(f"{os.getpid()}\n")
        except OSError as exc:
            log.error("cannot write pid file %s: %s", config.pid_file, exc.strerror)
            return 1
    try:
        await server.serve()
    finally:
        if config.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(config.pid_file)
    return 0


def _on_signal(server: object, signum: int) -> None:
    from gearstore.server.server import Server

    assert isinstance(server, Server)
    if server.stopping:
        log.warning("second %s: stopping now", signal.Signals(signum).name)
    else:
        log.info(
            "%s: stopping; running jobs get up to %.0f s",
            signal.Signals(signum).name,
            server.config.shutdown_timeout,
        )
    server.request_stop(graceful=True)


def _raise_fd_limit(wanted: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit to %d (now %d): %s", wanted, soft, exc)


def _drop_privileges(user: str) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        log.error("--user %s: no such user", user)
        raise SystemExit(2) from None
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


if __name__ == "__main__":
    raise SystemExit(main())
