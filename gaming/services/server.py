"""The match server: what ``python manage.py match_server`` runs, one asyncio loop holding
any number of matches (gaming/services/runtime.py), each ticking on its own fixed-rate
clock. It beats in Redis, claims the matches placed on it (gaming/services/placement.py),
hears each match's joins, leaves and inputs on the match's inbound channel, and sends
every tick to the players' match sockets through the process hub (realtime/hub.py):
one publish per tick for all the players of a match. A finished match's result is
recorded (ratings once) before its players hear ``end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection

from gaming.modes import mode_get
from gaming.modes.base import InputRefused
from gaming.selectors import matches_taken_from
from gaming.services.notify import match_found_notify
from gaming.services.placement import (
    HEARTBEAT_SECONDS,
    HEARTBEAT_TTL_SECONDS,
    TICK_MESSAGE,
    end_message,
    inbound_channel,
    match_players_of,
    matches_claim,
    region_key,
    server_heartbeat_payload,
    server_key,
)
from gaming.services.ratings import ResultRefused, match_abort, match_result_record
from gaming.services.runtime import Lateness, MatchRuntime, TickClock
from realtime.hub import hub_publish_async

log = logging.getLogger(__name__)

CLAIM_EVERY_SECONDS = 0.25
# How often the server asks whether the matches it holds are still its own to run.
RELEASE_EVERY_SECONDS = 2.0
# A player not on the match's socket this long after it began is notified through the pipeline.
NOTIFY_ABSENT_SECONDS = 5.0
# A web process's batch of signals for one match (gaming/services/inbound.py BATCH_MAX_BYTES).
INBOUND_MAX_BYTES = 64 * 1024
# The longest the inputs may hold the loop before the clocks get a turn.
INBOUND_SLICE_SECONDS = 0.0005


def _close_database() -> None:
    """Close the database connection of the thread this runs on (the one the services'
    calls from the loop ran on)."""
    connection.close()


@dataclass
class Running:
    runtime: MatchRuntime
    recipients: dict[str, int]  # external id -> recipient id
    clock: TickClock
    task: asyncio.Task[None] | None = None
    reported: int = 0  # the clock's lateness samples told in heartbeats so far


@dataclass
class MatchServer:
    name: str
    region: str
    capacity: int = 200
    grace_seconds: float = 20.0
    matches: dict[str, Running] = field(default_factory=dict)
    finished: int = 0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    outgoing: list[tuple[list[int], dict[str, Any]]] = field(default_factory=list)
    publisher: asyncio.Task[None] | None = None

    async def run(self, *, ready: asyncio.Event | None = None) -> None:
        self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
        # Ticks go out on a connection of their own: a heartbeat never waits behind them.
        self.publish_client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1)
        self.pubsub = self.client.pubsub()
        # a placeholder subscription, so that the reader has something to wait on
        await self.pubsub.subscribe(inbound_channel("none"))
        await self._beat()
        tasks = [asyncio.create_task(self._beat_forever()), asyncio.create_task(self._read_inbound())]
        if ready is not None:
            ready.set()
        try:
            released_at = time.monotonic()
            while not self.stopping.is_set():
                await self._claim()
                if time.monotonic() - released_at >= RELEASE_EVERY_SECONDS:
                    released_at = time.monotonic()
                    await self._release_ended()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), CLAIM_EVERY_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            await self._stop_matches()
            with contextlib.suppress(redis.RedisError, OSError):
                await self.client.delete(server_key(self.name))
                await self.client.srem(region_key(self.region), self.name)
            await self.pubsub.aclose()
            await self.client.aclose()
            await self.publish_client.aclose()
            await sync_to_async(_close_database)()

    # -- presence in Redis --

    async def _beat(self) -> None:
        payload = server_heartbeat_payload(
            region=self.region, matches=len(self.matches), capacity=self.capacity, ticks=self._ticks_since()
        )
        await self.client.set(server_key(self.name), payload, ex=HEARTBEAT_TTL_SECONDS)
        await self.client.sadd(region_key(self.region), self.name)

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._beat()
            except (redis.RedisError, OSError) as error:
                log.warning("match server %s: heartbeat failed: %s", self.name, error)

    def _ticks_since(self) -> dict[str, Any]:
        """The ticks run since the last heartbeat over every match held: how many, how late
        (p50, p99, max in ms) and how many skipped; what operators and P8 read."""
        window = Lateness()
        for running in self.matches.values():
            samples = running.clock.lateness.samples
            window.samples.extend(samples[running.reported :])
            running.reported = len(samples)
            window.skipped += running.clock.lateness.skipped
        return {
            "count": len(window.samples),
            "late_p50_ms": round(window.percentile(0.5) * 1000, 3),
            "late_p99_ms": round(window.percentile(0.99) * 1000, 3),
            "late_max_ms": round(max(window.samples, default=0.0) * 1000, 3),
            "skipped_total": window.skipped,
        }

    # -- matches --

    async def _claim(self) -> None:
        room = self.capacity - len(self.matches)
        try:
            claimed = await sync_to_async(matches_claim)(server=self.name, region=self.region, limit=room)
        except Exception:  # noqa: BLE001 - the database may be away; try again next round
            log.exception("match server %s: claiming matches failed", self.name)
            return
        for match in claimed:
            try:
                await self._start(match)
            except Exception:  # noqa: BLE001 - one match that cannot start must not stop the others
                log.exception("match server %s: match %s could not start", self.name, match.id)
                await self._abort(str(match.id), [], "it could not start")

    async def _release_ended(self) -> None:
        """Let go of held matches that are no longer running here: a server stalled past
        the heartbeat's life had them ended as aborted by the sweep
        (gaming/services/placement.py, ``matches_orphaned_abort``), and its players told;
        ticking them on would send states of a match that is over."""
        held = list(self.matches)
        try:
            gone = await sync_to_async(matches_taken_from)(server=self.name, match_ids=held)
        except Exception:  # noqa: BLE001 - the database may be away; ask again next round
            log.exception("match server %s: checking its matches failed", self.name)
            return
        for match_id in gone:
            running = self.matches.get(match_id)
            if running is None:
                continue
            if running.task is not None:
                running.task.cancel()
            self._drop(match_id)
            log.warning("match server %s: match %s ended elsewhere; let go of it", self.name, match_id)

    async def _start(self, match: Any) -> None:
        """Hold ``match`` and start its clock."""
        players = await sync_to_async(match_players_of)(match.id)
        mode = mode_get(match.mode)
        runtime = MatchRuntime(
            match_id=str(match.id),
            mode=mode,
            players=[ext for _, ext in players],
            seed=match.seed,
            now=time.monotonic(),
            grace_seconds=self.grace_seconds,
        )
        match_id = str(match.id)
        running = Running(
            runtime, {ext: rid for rid, ext in players}, TickClock(mode.tick_rate, self._ticker(match_id))
        )
        self.matches[match_id] = running
        await self.pubsub.subscribe(inbound_channel(match_id))
        running.task = asyncio.create_task(running.clock.run())
        asyncio.get_running_loop().call_later(NOTIFY_ABSENT_SECONDS, self._later_notify_absent, match_id)
        log.info("match server %s: running match %s (%s players)", self.name, match_id, len(players))

    def _later_notify_absent(self, match_id: str) -> None:
        asyncio.ensure_future(self._notify_absent(match_id))

    async def _notify_absent(self, match_id: str) -> None:
        """The players not on the page (not on the match's socket) a few seconds after it
        began hear of it through the pipeline."""
        running = self.matches.get(match_id)
        if running is None:
            return
        seats = running.runtime.seats.values()
        absent = [s.player for s in seats if not s.connected and not s.forfeited]
        try:
            await sync_to_async(match_found_notify)(
                match_id=match_id, mode_title=running.runtime.mode.title, players=len(seats), absent=absent
            )
        except Exception:  # noqa: BLE001 - a notification lost is not a match lost
            log.exception("match %s: notifying absent players failed", match_id)

    def _ticker(self, match_id: str) -> Any:
        async def on_tick(now: float) -> bool:
            running = self.matches.get(match_id)
            if running is None:
                return False
            try:
                output = running.runtime.step(now)
            except Exception:  # noqa: BLE001 - a mode's bug ends its match, not the server
                log.exception("match %s: its tick failed; aborting it", match_id)
                self._drop(match_id)
                await self._abort(match_id, list(running.recipients.values()), "the game failed")
                return False
            message: dict[str, Any] = {
                "type": TICK_MESSAGE,
                "match": match_id,
                "tick": output.tick,
                "acks": output.acks,
                "delta": output.delta,
                "full_for": output.full_for,
            }
            if output.full_for:
                message["snapshot"] = output.snapshot
            self._publish(list(running.recipients.values()), message)
            if output.result is None:
                return True
            await self._finish(match_id, running, output.result.as_dict())
            return False

        return on_tick

    def _publish(self, recipients: list[int], message: dict[str, Any]) -> None:
        """Queue a tick for the hub; one task sends what is queued, all of it in one PUBLISH
        (``hub_publish_async`` packs entries), so the ticks of many matches that come due
        together cost one round trip and one Redis connection, not one each."""
        self.outgoing.append((recipients, message))
        if self.publisher is None or self.publisher.done():
            self.publisher = asyncio.get_running_loop().create_task(self._publish_queued())

    async def _publish_queued(self) -> None:
        while self.outgoing:
            entries, self.outgoing = self.outgoing, []
            try:
                await hub_publish_async(self.publish_client, entries)
            except (redis.RedisError, OSError) as error:
                # A socket that misses a tick asks for a whole state again
                # (gaming/consumers.py, a delta only follows its own previous tick).
                log.warning("match server %s: %d ticks not published: %s", self.name, len(entries), error)

    async def _finish(self, match_id: str, running: Running, result: dict[str, Any]) -> None:
        try:
            await sync_to_async(match_result_record)(match_id=match_id, result=result)
        except ResultRefused as refused:
            log.warning("match %s: result not recorded: %s", match_id, refused)
        except Exception:  # noqa: BLE001 - the players still hear the end
            log.exception("match %s: recording the result failed", match_id)
        # Behind the match's last tick, in the same queue.
        self._publish(list(running.recipients.values()), end_message(match_id, result=result))
        self._drop(match_id)
        self.finished += 1

    def _drop(self, match_id: str) -> None:
        running = self.matches.pop(match_id, None)
        if running is not None:
            asyncio.ensure_future(self.pubsub.unsubscribe(inbound_channel(match_id)))

    async def _abort(self, match_id: str, recipients: list[int], reason: str) -> None:
        """End a match as aborted (no rating changes) and tell its players."""
        with contextlib.suppress(Exception):
            await sync_to_async(match_abort)(match_id=match_id, reason=reason)
            if recipients:
                await hub_publish_async(self.client, [(recipients, end_message(match_id, reason=reason))])

    async def _stop_matches(self) -> None:
        """A server asked to stop ends what it holds as aborted and says so."""
        for match_id, running in list(self.matches.items()):
            if running.task is not None:
                running.task.cancel()
            await self._abort(
                match_id, list(running.recipients.values()), f"its match server {self.name} stopped"
            )
        self.matches.clear()

    # -- what the sockets say --

    async def _read_inbound(self) -> None:
        loop = asyncio.get_running_loop()
        yield_at = loop.time() + INBOUND_SLICE_SECONDS
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as error:
                log.warning("match server %s: inbound subscription failed: %s", self.name, error)
                await asyncio.sleep(0.5)
                continue
            if message is not None and message["type"] == "message":
                self.inbound(message["channel"], message["data"])
            # A message already read into the connection's buffer is returned without
            # suspending: under a flood of inputs this loop would keep the clocks waiting.
            # Every slice of work it lets the due ticks run.
            if loop.time() >= yield_at:
                await asyncio.sleep(0)
                yield_at = loop.time() + INBOUND_SLICE_SECONDS

    def inbound(self, channel: bytes | str, data: bytes | str) -> None:
        """One message from the web processes: a signal, or ``{"kind": "batch", "signals"}``
        (gaming/services/inbound.py), taken in order."""
        if len(data) > INBOUND_MAX_BYTES:
            return
        name = channel.decode() if isinstance(channel, bytes) else channel
        match_id = name.rsplit(":", 2)[-2]
        running = self.matches.get(match_id)
        if running is None:
            return
        try:
            signal = json.loads(data)
        except ValueError:
            return
        if (
            isinstance(signal, dict)
            and signal.get("kind") == "batch"
            and isinstance(signal.get("signals"), list)
        ):
            for one in signal["signals"]:
                self._signal(running, one)
        else:
            self._signal(running, signal)

    def _signal(self, running: Running, signal: Any) -> None:
        try:
            kind, player = signal["kind"], signal["player"]
        except (KeyError, TypeError):
            return
        if player not in running.recipients:
            return
        now = time.monotonic()
        if kind == "join":
            running.runtime.join(player, now)
        elif kind == "leave":
            running.runtime.leave(player, now)
        elif kind == "input" and isinstance(signal.get("frame"), dict):
            with contextlib.suppress(InputRefused):
                running.runtime.receive(player, signal["frame"], now)

    # -- figures --

    def lateness(self) -> Lateness:
        """Every tick's lateness over the matches held now."""
        merged = Lateness()
        for running in self.matches.values():
            merged.samples.extend(running.clock.lateness.samples)
            merged.skipped += running.clock.lateness.skipped
        return merged
