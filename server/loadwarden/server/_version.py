"""The service's version, as `loadwarden --version` and the tracer report it."""

VERSION = "0.1.0"
