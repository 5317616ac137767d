"""The root of Sluicegate's exception tree, in the lowest layer so every package can use it.

SluicegateError
├── schemas.registry.SchemaError          undecodable / unknown schema id / invalid record
├── streams.config.ConfigError            bad sluicegate.toml (names the key)
└── connectors.providers.errors.ProviderError   a provider call failed (see that module)
"""


class SluicegateError(Exception):
    """Base class of every error Sluicegate raises on purpose."""
