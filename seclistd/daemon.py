"""Lifecycle of `seclistd run`: start the rooms, handle signals, tell systemd.

Threads: the IMAP intake (one client, its own thread), the aiosmtpd listener (its own event
loop thread), the relay loop (woken at once when new mail is committed, otherwise every few
seconds for retries) and the APScheduler sweeps. SIGTERM/SIGINT set one stop event: the
intake finishes the message in hand, the listener stops accepting connections and answers
421 to a new transaction while those under way end (each answered after its commit, for up
to ``limits.processing_seconds`` plus a margin), the relay gives back unsent leases, and the
process exits 0. SIGHUP reloads the configuration (``seclistd.reload``: what it changes and
what needs a restart) without closing a socket or a connection; the loops read the live
settings for each piece of work. ``sd_notify`` sends READY, WATCHDOG, RELOADING and STOPPING.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from aiosmtpd.controller import Controller
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from seclistd import heartbeat, relay, scheduler
from seclistd.config import Settings
from seclistd.db import make_engine, session_factory, transaction
from seclistd.errors import trace
from seclistd.intake import imap
from seclistd.intake.listener import Handler, make_controller
from seclistd.reload import LiveSettings

log = logging.getLogger(__name__)

RELAY_POLL = 5.0
DRAIN_MARGIN = 5.0  # seconds beyond limits.processing_seconds for transactions under way


class StartupError(Exception):
    """The daemon cannot start; the text is the one line for the operator."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sd_notify(state: str) -> None:
    """Tell systemd about our state over $NOTIFY_SOCKET; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


def drain_relay(settings: Settings, factory: sessionmaker[Session],
                clock: Callable[[], dt.datetime], should_stop: Callable[[], bool] = lambda: False
                ) -> int:
    transport = relay.make_transport(settings.relay)
    try:
        return relay.drain(factory, settings.relay, transport, clock, relay.lease_owner(),
                           should_stop=should_stop, seal=relay.sealer(settings))
    finally:
        transport.close()


def run_once(settings: Settings, engine: Engine, clock: Callable[[], dt.datetime] = utcnow
             ) -> None:
    """Drain what is waiting: the sweeps, an IMAP pass, and the outbox.

    The relay runs in a thread beside the IMAP pass, woken by each commit, so receipts go
    out while the inbox is still being read; it drains whatever is left once the pass ends.
    """
    factory = session_factory(engine)
    scheduler.sweep_once(factory, clock, settings)
    wake, intake_done = threading.Event(), threading.Event()
    sent = [0]

    def relay_worker() -> None:
        while True:
            last_round = intake_done.is_set()
            wake.clear()
            sent[0] += drain_relay(settings, factory, clock)
            if last_round:
                return
            wake.wait(0.5)

    worker = threading.Thread(target=relay_worker, name="relay", daemon=True)
    worker.start()
    try:
        if settings.imap.enabled:
            imap_pass(settings, engine, factory, clock, wake.set)
    finally:
        intake_done.set()
        wake.set()
        worker.join()
    log.info("relay sent %d messages", sent[0])


def imap_pass(settings: Settings, engine: Engine, factory: sessionmaker[Session],
              clock: Callable[[], dt.datetime], on_commit: Callable[[], None]) -> None:
    lock = imap.IntakeLock(engine)
    if not lock.acquire():
        log.info("another daemon holds the IMAP intake; skipping the IMAP pass")
        return
    try:
        client = imap.connect(settings.imap)
        try:
            imap.ensure_folders(client, settings.imap)
            count = imap.run_pass(client, settings, factory, clock, on_commit=on_commit)
            log.info("IMAP pass stored %d new messages", count)
        finally:
            client.logout()
    finally:
        lock.release()


def probe_bind(host: str, port: int) -> None:
    """Raise the OSError a listener on host:port would meet (EADDRINUSE: taken), binding
    as asyncio does (SO_REUSEADDR) and letting go at once."""
    for family, kind, proto, _name, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)


class Daemon:
    def __init__(self, settings: Settings, engine: Engine | None = None,
                 clock: Callable[[], dt.datetime] = utcnow,
                 stop: threading.Event | None = None):
        self.live = LiveSettings(settings)
        self.engine = engine or make_engine(settings.database.url)
        self.factory = session_factory(self.engine)
        self.clock = clock
        self.stop = stop or threading.Event()
        self.wake = threading.Event()
        self.tick = threading.Event()  # wakes the main loop: a stop or a reload
        self.hup = threading.Event()
        self.threads: list[threading.Thread] = []
        self.handler: Handler | None = None

    @property
    def settings(self) -> Settings:
        """The live settings (the last valid ones SIGHUP loaded)."""
        return self.live.current

    def request_stop(self, *_args: object) -> None:
        self.stop.set()
        self.wake.set()
        self.tick.set()

    def request_reload(self, *_args: object) -> None:
        # Only flags: the main loop reloads (a signal handler must not take the log's lock).
        self.hup.set()
        self.tick.set()

    def reload(self) -> None:
        self.hup.clear()
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        if self.live.reload():
            self.wake.set()  # the relay and notices may have new work (a new team member)
        sd_notify("READY=1")

    def _relay_loop(self) -> None:
        transport = relay.make_transport(self.settings.relay)
        owner = relay.lease_owner()
        seal = relay.sealer(self.settings)
        try:
            while not self.stop.is_set():
                self.wake.clear()
                try:
                    relay.drain(self.factory, self.settings.relay, transport, self.clock, owner,
                                should_stop=self.stop.is_set, seal=seal)
                except Exception as exc:  # noqa: BLE001 - the loop must survive a database hiccup
                    log.error("relay pass failed:\n%s", trace(exc))
                self.wake.wait(RELAY_POLL)
        finally:
            transport.close()

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _start_listener(self) -> Controller | None:
        lst = self.settings.listener
        if not lst.enabled:
            return None
        handler = Handler(self.settings, self.factory, self.clock, self.wake.set,
                          current=self.live)
        self.handler = handler
        controller = make_controller(self.settings, handler)
        try:
            # aiosmtpd reports a failed bind only after its ready timeout: ask first.
            probe_bind(lst.host, lst.port)
            controller.start()
        except OSError as exc:
            with contextlib.suppress(Exception):
                controller.stop()
            self.engine.dispose()
            where = f"{lst.host}:{lst.port}"
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"{where} is in use: is another seclistd running? Stop it, "
                                   "or set listener.port to a free port") from exc
            raise StartupError(f"cannot listen on {where} ({exc.strerror or type(exc).__name__}"
                               "): check listener.host and listener.port") from exc
        log.info("listening for %s on %s:%s", lst.protocol.upper(), lst.host, lst.port)
        return controller

    def _drain_listener(self, controller: Controller) -> None:
        """Stop accepting, then wait (bounded) for transactions under way to be answered."""
        handler = self.handler
        loop = getattr(controller, "loop", None)
        server = getattr(controller, "server", None)
        if handler is None or loop is None or not loop.is_running():
            return
        handler.closing = True
        if server is not None:
            loop.call_soon_threadsafe(server.close)

        async def busy() -> int:
            return handler.busy()

        deadline = time.monotonic() + self.settings.limits.processing_seconds + DRAIN_MARGIN
        pause = threading.Event()  # never set: a timed wait (time.sleep fails under faketime)
        while time.monotonic() < deadline:
            try:
                left = asyncio.run_coroutine_threadsafe(busy(), loop).result(timeout=5)
            except Exception:  # noqa: BLE001 - the loop is gone: nothing left to wait for
                return
            if not left:
                return
            pause.wait(0.05)
        log.warning("stopped with %d SMTP/LMTP transactions unfinished; their clients "
                    "keep the messages and retry", len(handler.sessions))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # SIGHUP only sets a flag the main loop reads: safe from the first moment (its
        # default action would end the daemon).
        signal.signal(signal.SIGHUP, self.request_reload)
        # The listener first: when its address is taken (another seclistd runs), nothing
        # else has started and the process ends with one line.
        controller = self._start_listener()
        with transaction(self.factory) as session:
            relay.release_dead_leases(session)
        sweeps = scheduler.start(self.factory, self.clock, self.settings, current=self.live)
        intake = None
        if self.settings.imap.enabled:
            intake = imap.ImapIntake(self.settings, self.engine, self.factory, self.clock,
                                     self.stop, self.wake.set, current=self.live)
            self._thread("imap", intake.run)
        beats = heartbeat.Heartbeat(self.factory, self.clock, intake and intake.lock)
        self._thread("relay", self._relay_loop)
        sd_notify("READY=1")
        # WATCHDOG=1 comes from this main loop, only after READY, every WATCHDOG_USEC / 2,
        # and only while the worker threads (IMAP intake, relay) are alive: a stuck loop or a
        # dead worker stops the pings and systemd restarts the service.
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        interval = int(watchdog_usec) / 2e6 if watchdog_usec.isdigit() else None
        workers = list(self.threads)
        last_ping: float | None = None
        log.info("seclistd running")
        beats.tick()
        while not self.stop.is_set():
            if interval is not None and all(t.is_alive() for t in workers) and (
                    last_ping is None or time.monotonic() - last_ping >= interval):
                sd_notify("WATCHDOG=1")
                last_ping = time.monotonic()
            self.tick.wait(1.0 if interval is None else max(0.001, min(1.0, interval)))
            self.tick.clear()
            beats.tick()
            if self.hup.is_set() and not self.stop.is_set():
                self.reload()
        sd_notify("STOPPING=1")
        log.info("stopping")
        if controller is not None:
            self._drain_listener(controller)
            controller.stop()
        for thread in self.threads:
            thread.join(timeout=30)
        sweeps.shutdown(wait=True)
        beats.stop()
        self.engine.dispose()
        log.info("stopped")
        return 0
