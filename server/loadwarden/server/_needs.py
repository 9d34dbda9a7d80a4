"""Imported first by ``loadwarden.server``: with only the SDK installed (no ``server``
extra), importing the service fails with a ModuleNotFoundError that names the extra and
the missing distributions, before any of them is imported."""

from loadwarden._extras import require_server

require_server("loadwarden.server")
