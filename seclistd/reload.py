"""Live settings of a running daemon, swapped whole on SIGHUP.

The daemon's loops (the listener's handler, the IMAP intake, the relay loop, the sweeps)
read ``LiveSettings.current`` each time they start a piece of work, so a reload changes what
the next message, notice or sweep sees, never one in hand (the object they hold is frozen).

Reloaded: templates (the Jinja2 environment is rebuilt), ``[project]``, ``[team]``,
``[[lists]]``, ``[membership]``, ``[autoreply]``, ``[sla]``, ``[calendar]``, ``[templates]``
and ``[limits]`` (except the listener's size limit, fixed when its socket opened).
Kept until a restart, because they name a socket, a connection or a keyring the daemon holds
open: every key of ``[database]``, ``[listener]``, ``[imap]``, ``[relay]`` and ``[gnupg]``.
A change to one of those is logged by key name (never by value: some are passwords).
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from seclistd import config
from seclistd.config import Settings
from seclistd.mail import render

log = logging.getLogger(__name__)

RESTART_SECTIONS = ("database", "listener", "imap", "relay", "gnupg")


def needs_restart(old: Settings, new: Settings) -> list[str]:
    """``section.key`` of each changed setting that only a restart applies."""
    changed = []
    for section in RESTART_SECTIONS:
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(before):
            if getattr(before, f.name) != getattr(after, f.name):
                changed.append(f"{section}.{f.name}")
    return changed


class LiveSettings:
    """The settings the daemon's loops read; ``reload`` swaps them after validating the
    file again. Reading ``current`` is one attribute load: no lock for readers."""

    def __init__(self, settings: Settings):
        self._current = settings
        self._lock = threading.Lock()  # one reload at a time

    @property
    def current(self) -> Settings:
        return self._current

    def __call__(self) -> Settings:
        return self._current

    def reload(self) -> bool:
        """Re-read the config file; on success swap it in (the restart-only sections kept)
        and return True. A bad file is logged as one line and the old settings stay."""
        with self._lock:
            old = self._current
            try:
                new = config.load(old.path)
            except config.ConfigError as exc:
                more = len(exc.problems) - 1
                log.error("SIGHUP: configuration not reloaded, the old one stays: %s%s",
                          exc.problems[0], f" (and {more} more problems: seclistd "
                          "check-config lists them)" if more > 0 else "")
                return False
            pending = needs_restart(old, new)
            kept = {section: getattr(old, section) for section in RESTART_SECTIONS}
            self._current = dataclasses.replace(new, **kept)
            render.environment.cache_clear()
            log.info("SIGHUP: configuration reloaded from %s (team of %d, %d lists)",
                     old.path, len(new.team.members), len(new.lists))
            if pending:
                log.warning("SIGHUP: %s changed; these take effect only when seclistd is "
                            "restarted (systemctl restart seclistd)", ", ".join(pending))
            return True
