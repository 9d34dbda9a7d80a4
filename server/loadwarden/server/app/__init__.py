"""The service's assembly: config, the CLI, state persistence and stores, start and stop.
May import every other part of loadwarden.server, loadwarden.policy and loadwarden.observability."""
