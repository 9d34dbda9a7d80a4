"""The ``loadwarden`` command."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from loadwarden.observability import LOG_LEVELS, configure_logging, configure_tracing, shutdown_tracing

from .._errors import ConfigError
from .._version import VERSION
from ..rpc._tls import load_tls
from ._config import ServiceConfig, load_config
from ._config_file import config_schema
from ._service import build_core, serve

# Entry-point group of the packages that add subcommands: each entry is a callable
# ``add_commands(subparsers)``, and each parser it adds sets ``run=callable(args) -> exit
# code``. The service names no such package: the simulator registers itself (pyproject.toml).
COMMANDS_GROUP = "loadwarden.commands"
# Entry-point group of the JSON Schemas of other files (the simulator's scenario files):
# name -> callable() -> the schema as a dict.
SCHEMAS_GROUP = "loadwarden.schemas"
_MESSAGE_MAX_LEN = 2_000

log = logging.getLogger("loadwarden.server")


def _parser(with_commands: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loadwarden", description="loadwarden load-decision control plane")
    parser.add_argument("--version", action="version", version=f"loadwarden {VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the Decision service")
    run.add_argument("--config", metavar="FILE", help="TOML config file (default: none, empty in-memory state)")
    run.add_argument("--listen", metavar="HOST:PORT", help="gRPC address (default 127.0.0.1:50051)")
    run.add_argument("--log-level", default="INFO", choices=LOG_LEVELS)
    check = commands.add_parser(
        "check-config",
        help="validate a config file (and the LOADWARDEN_* environment) without starting",
        description="Reads FILE as `serve --config FILE` would, with the LOADWARDEN_* environment "
        "applied, and checks everything that does not need the network: keys and values, pools and "
        "their strategies, operations, limits and the tls.* files. Exit 0 when valid, 2 with the "
        "message `serve` would print otherwise. Redis (state.url) is not contacted.",
    )
    check.add_argument("file", metavar="FILE", help="TOML config file")
    schemas = ["config", *sorted(entry.name for entry in entry_points(group=SCHEMAS_GROUP))]
    schema = commands.add_parser(
        "config-schema",
        help="print the JSON Schema of the config file (or of scenario files)",
        description="Prints a JSON Schema (2020-12) for editors and CI checks: of the config file "
        "`serve --config` reads, or of the simulator's scenario files. Point an editor at it, e.g. "
        "with `#:schema ./loadwarden.schema.json` as a TOML file's first line (taplo, Even Better TOML).",
    )
    schema.add_argument("name", nargs="?", default="config", choices=schemas, help="which file (default: config)")
    schema.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    for entry in entry_points(group=COMMANDS_GROUP) if with_commands else ():
        entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loadwarden`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # `serve` alone skips importing the simulator (numpy and all): the service starts faster.
    args = _parser(with_commands=argv[:1] not in (["serve"], ["check-config"], ["config-schema"])).parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "config-schema":
        return _config_schema(args.name, args.output)
    if args.command != "serve":
        return int(args.run(args))
    configure_logging(args.log_level)
    try:
        configure_tracing("loadwarden")  # from the OTEL_* variables; off when they ask for nothing
    except ValueError as exc:
        return _invalid(exc)
    config = _read_config(args.config)
    if isinstance(config, int):
        return config
    if config.logging.format != "text":  # text until the config said otherwise (its own errors are one line)
        configure_logging(args.log_level, config.logging.format)
    if args.listen:
        config = dataclasses.replace(config, listen=args.listen)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        return _invalid(exc)
    except OSError as exc:
        print(f"loadwarden: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown_tracing()  # exports the spans still buffered
    return 0


def _read_config(path: str | None) -> ServiceConfig | int:
    """The configuration ``serve`` would run, or the exit code after saying why it cannot."""
    try:
        return load_config(path, os.environ)
    except ConfigError as exc:
        return _invalid(exc)
    except Exception as exc:  # a parser bug, yet the input is what caused it: one line, never a traceback
        log.debug("reading the configuration failed", exc_info=True)
        where = path if path is not None else "the LOADWARDEN_* environment"
        return _invalid(
            f"{where}: cannot be read ({type(exc).__name__}: {exc}); run with --log-level DEBUG for details"
        )


def _check_config(path: str) -> int:
    """``loadwarden check-config FILE``: what ``serve`` checks before it binds a port."""
    config = _read_config(path)
    if isinstance(config, int):
        return config
    try:
        load_tls(config.tls)
        # The pools and operations as the service would build them; no host sampling.
        build_core(dataclasses.replace(config, monitor=dataclasses.replace(config.monitor, enabled=False)))
    except ConfigError as exc:
        return _invalid(exc)
    servers = sum(len(spec.servers or ()) for spec in config.pools)
    print(
        f"{path}: valid ({len(config.pools)} pools, {servers} servers, {len(config.operations)} operations, "
        f"state in {config.state.store})"
    )
    return 0


def _config_schema(name: str, output: str | None) -> int:
    """``loadwarden config-schema [NAME] [-o FILE]``."""
    if name == "config":
        schema = config_schema()
    else:
        (entry,) = entry_points(group=SCHEMAS_GROUP, name=name)
        try:
            schema = entry.load()()
        except ModuleNotFoundError as exc:  # the simulator without the `eval` extra
            print(
                f"loadwarden config-schema {name}: needs the 'eval' extra, which is not installed "
                f"(missing: {exc.name}): pip install 'loadwarden[eval]'",
                file=sys.stderr,
            )
            return 2
    text = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"loadwarden config-schema: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _invalid(problem: object) -> int:
    """Prints ``problem`` as exactly one line on stderr and returns exit code 2."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(problem))
    if len(text) > _MESSAGE_MAX_LEN:  # a huge key or value in a config never floods the terminal
        text = f"{text[:_MESSAGE_MAX_LEN]}... ({len(text)} characters)"
    print(f"loadwarden: invalid configuration: {text}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
