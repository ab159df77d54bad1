"""A running match as the match server holds it: the mode's state, each player's seat
(connected or not, their input gate), the inputs waiting for the next tick, and what each
tick sends out. No I/O here: the match server's loop feeds it inputs and socket events
and sends what ``step`` returns; ``TickClock`` keeps its rate.

Per tick: the inputs that arrived since the last one are applied in arrival order (each
player's sequence number becomes their ``ack``), the mode steps by one period, a player
away longer than the grace period forfeits, and the tick's output carries the delta from
the previous snapshot (for everyone who has that one) and the whole snapshot (for whoever
joined or came back since: they need a fresh start).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gaming.modes.base import GameMode, InputRefused, Result, delta
from gaming.services.inputs import PlayerInputs

GRACE_SECONDS = 20.0


@dataclass
class Seat:
    player: str
    inputs: PlayerInputs
    connected: bool = False
    away_since: float | None = None  # when the player's last socket closed (or the match began)
    needs_full: bool = True
    forfeited: bool = False


@dataclass
class TickOutput:
    tick: int
    delta: dict[str, Any]
    snapshot: dict[str, Any]
    acks: dict[str, int]
    full_for: list[str]
    forfeited: list[str] = field(default_factory=list)
    result: Result | None = None  # set on the tick the match ended

    def frame_for(self, player: str) -> dict[str, Any]:
        """The state frame ``player`` gets for this tick (DESIGN's ``{"type": "state"}``)."""
        frame: dict[str, Any] = {"type": "state", "tick": self.tick, "ack": self.acks.get(player, 0)}
        if player in self.full_for:
            frame["state"] = self.snapshot
        else:
            frame["delta"] = self.delta
        return frame


class MatchRuntime:
    def __init__(
        self,
        *,
        match_id: str,
        mode: GameMode,
        players: list[str],
        seed: int,
        now: float,
        grace_seconds: float = GRACE_SECONDS,
    ) -> None:
        self.match_id = match_id
        self.mode = mode
        self.state = mode.initial_state(players, seed=seed)
        self.period = 1.0 / mode.tick_rate
        self.grace_seconds = grace_seconds
        self.tick = 0
        # Nobody is connected yet: the grace period runs from the start for everyone.
        self.seats = {
            p: Seat(p, PlayerInputs(rate=float(mode.max_inputs_per_second)), away_since=now) for p in players
        }
        self._pending: list[tuple[str, int, Any]] = []
        self._last = mode.snapshot(self.state)
        self.result: Result | None = None

    # -- the players' sockets --

    def join(self, player: str, now: float) -> None:
        """A socket of ``player`` opened: their next frame is the whole snapshot."""
        seat = self.seats[player]
        seat.connected, seat.away_since, seat.needs_full = True, None, True

    def leave(self, player: str, now: float) -> None:
        """The player's socket closed: the grace period starts."""
        seat = self.seats[player]
        if seat.connected:
            seat.connected, seat.away_since = False, now

    def receive(self, player: str, frame: dict[str, Any], now: float) -> None:
        """An input frame from ``player``: kept for the next tick, or InputRefused (counted
        in the player's gate, under the field that was wrong)."""
        seat = self.seats[player]
        if seat.forfeited or self.result is not None:
            refused = InputRefused("player", "is no longer in the match")
            seat.inputs.count(refused)
            raise refused
        seq = seat.inputs.admit(frame, now)
        try:
            command = self.mode.validate_input(self.state, player, frame)
        except InputRefused as refused:
            seat.inputs.count(refused)
            seat.inputs.applied(seq)  # processed: the client stops predicting it
            raise
        self._pending.append((player, seq, command))

    def dropped(self) -> dict[str, int]:
        """Inputs dropped so far, by the field that was wrong, over all players."""
        totals: dict[str, int] = {}
        for seat in self.seats.values():
            for name, count in seat.inputs.dropped.items():
                totals[name] = totals.get(name, 0) + count
        return totals

    # -- the tick --

    def step(self, now: float) -> TickOutput:
        for player, seq, command in self._pending:
            self.mode.apply_input(self.state, player, command)
            self.seats[player].inputs.applied(seq)
        self._pending.clear()
        self.mode.step(self.state, self.period)
        self.tick += 1
        forfeited = []
        for seat in self.seats.values():
            away = seat.away_since
            if (
                not seat.forfeited
                and not seat.connected
                and away is not None
                and now - away >= self.grace_seconds
            ):
                self.mode.forfeit(self.state, seat.player)
                seat.forfeited = True
                forfeited.append(seat.player)
        snapshot = self.mode.snapshot(self.state)
        change = delta(self._last, snapshot)
        self._last = snapshot
        full_for = [s.player for s in self.seats.values() if s.connected and s.needs_full]
        for player in full_for:
            self.seats[player].needs_full = False
        output = TickOutput(
            tick=self.tick,
            delta=change,
            snapshot=snapshot,
            acks={p: s.inputs.last_seq for p, s in self.seats.items()},
            full_for=full_for,
            forfeited=forfeited,
        )
        if self.result is None and self.mode.is_over(self.state):
            self.result = output.result = self.mode.result(self.state)
        return output


# --- the clock ---------------------------------------------------------------------------------


@dataclass
class Lateness:
    """How late ticks ran after their deadline, in seconds."""

    samples: list[float] = field(default_factory=list)
    skipped: int = 0  # ticks given up because the loop was more than a period behind

    def add(self, late: float) -> None:
        self.samples.append(late)

    def percentile(self, share: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


class TickClock:
    """Runs ``on_tick`` at a fixed rate on the running loop. Deadlines are absolute
    (start + n periods), so the time a tick takes and the loop's wake-up jitter do not add
    up into drift; a loop more than a whole period behind skips to the next deadline
    instead of running a burst of late ticks."""

    def __init__(self, rate: float, on_tick: Callable[[float], Awaitable[bool]]) -> None:
        self.period = 1.0 / rate
        self.on_tick = on_tick
        self.lateness = Lateness()
        self.ticks = 0

    async def run(self) -> None:
        """Tick until ``on_tick`` returns False."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 1
        while True:
            deadline = start + n * self.period
            wait = deadline - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            late = loop.time() - deadline
            self.lateness.add(late)
            if late >= self.period:
                behind = int(late // self.period)
                self.lateness.skipped += behind
                n += behind
            self.ticks += 1
            n += 1
            if not await self.on_tick(time.monotonic()):
                return
