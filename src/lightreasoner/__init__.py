"""LightReasoner: a small amateur model teaches a larger expert model to reason."""

__version__ = "0.1.0"
