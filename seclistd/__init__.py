"""seclistd: the mail daemon behind an open-source project's security@ address."""

__version__ = "0.1.0"
