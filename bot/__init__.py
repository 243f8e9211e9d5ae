"""hearthbot's core: events, config, store, router, providers, sessions and wiring."""

__version__ = "0.1.0"
