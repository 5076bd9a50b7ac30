"""Configs: the run-level schemas, ``_target_`` validation against the code, and resolvers.

Importing this package is cheap (no Hydra, no torch): :func:`register` loads what it needs.
"""

from __future__ import annotations


def register() -> None:
    """Put the run-level schemas in Hydra's ConfigStore and ptft's resolvers in OmegaConf
    (idempotent); the entry points call it before composing."""
    from hydra.core.config_store import ConfigStore

    from ptft.config import resolvers
    from ptft.config.schemas import SCHEMAS

    resolvers.register()
    store = ConfigStore.instance()
    for group, nodes in SCHEMAS.items():
        for name, node in nodes.items():
            store.store(group=group, name=name, node=node)
