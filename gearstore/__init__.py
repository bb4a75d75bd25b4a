"""gearstore: a Gearman job server whose background jobs survive restarts and crashes."""

__version__ = "0.1.0"
