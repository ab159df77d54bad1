"""Arena: a top-down shooter for 2-10 players. Move, aim, shoot; health packs; a round
timer. The player with the most eliminations when the time runs out wins (fewer deaths
break a tie; equal on both is a draw).

The movement rule (``move``) is the one the browser client replays for its own player's
prediction (gaming/static/gaming/arena.js keeps the same constants): the server's answer
wins whenever they differ.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gaming.modes.base import GameMode, InputRefused, Result, Standing, finite_number

WIDTH = 1200.0
HEIGHT = 800.0
PLAYER_RADIUS = 16.0
SPEED = 240.0  # units per second at full stick
MAX_HEALTH = 100
SHOT_COOLDOWN = 0.25
BULLET_SPEED = 900.0
BULLET_LIFETIME = 0.9
BULLET_DAMAGE = 25
RESPAWN_SECONDS = 2.0
PICKUP_HEAL = 40
PICKUP_RESPAWN_SECONDS = 8.0
ROUND_SECONDS = 120.0
# Walls: (x, y, width, height), kept symmetric so that no spawn point is favoured.
WALLS: tuple[tuple[float, float, float, float], ...] = (
    (280.0, 180.0, 40.0, 200.0),
    (880.0, 420.0, 40.0, 200.0),
    (520.0, 370.0, 160.0, 60.0),
    (280.0, 560.0, 200.0, 40.0),
    (720.0, 200.0, 200.0, 40.0),
)
SPAWNS: tuple[tuple[float, float], ...] = (
    (80.0, 80.0), (1120.0, 720.0), (1120.0, 80.0), (80.0, 720.0), (600.0, 80.0),
    (600.0, 720.0), (80.0, 400.0), (1120.0, 400.0), (420.0, 300.0), (780.0, 500.0),
)  # fmt: skip
PICKUPS: tuple[tuple[float, float], ...] = ((600.0, 250.0), (600.0, 550.0), (180.0, 400.0), (1020.0, 400.0))


@dataclass
class Player:
    id: str
    x: float
    y: float
    aim: float = 0.0
    health: int = MAX_HEALTH
    kills: int = 0
    deaths: int = 0
    move_x: float = 0.0
    move_y: float = 0.0
    shooting: bool = False
    cooldown: float = 0.0
    respawn_in: float = 0.0
    forfeited: bool = False

    @property
    def alive(self) -> bool:
        return self.respawn_in <= 0 and not self.forfeited


@dataclass
class Bullet:
    id: int
    owner: str
    x: float
    y: float
    vx: float
    vy: float
    life: float = BULLET_LIFETIME


@dataclass
class Pickup:
    id: int
    x: float
    y: float
    respawn_in: float = 0.0


@dataclass
class ArenaState:
    players: dict[str, Player]
    pickups: list[Pickup]
    rng: random.Random
    bullets: list[Bullet] = field(default_factory=list)
    time_left: float = ROUND_SECONDS
    next_bullet: int = 1
    events: list[dict[str, Any]] = field(default_factory=list)  # this tick's, for the clients


@dataclass(frozen=True)
class ArenaInput:
    move_x: float
    move_y: float
    aim: float
    shoot: bool


# Each wall as (left, top, right, bottom): the test below runs for every player and bullet
# on every tick, the match server's hottest loop (docs/benchmarks.md, P8).
_WALL_EDGES = tuple((wx, wy, wx + ww, wy + wh) for wx, wy, ww, wh in WALLS)


def _blocked(x: float, y: float, radius: float) -> bool:
    if not (radius <= x <= WIDTH - radius and radius <= y <= HEIGHT - radius):
        return True
    for left, top, right, bottom in _WALL_EDGES:
        # Beyond the wall's box grown by the radius: not touching it (most walls, most ticks).
        if x <= left - radius or x >= right + radius or y <= top - radius or y >= bottom + radius:
            continue
        dx = x - (left if x < left else right if x > right else x)
        dy = y - (top if y < top else bottom if y > bottom else y)
        if dx * dx + dy * dy < radius * radius:
            return True
    return False


def move(x: float, y: float, move_x: float, move_y: float, dt: float) -> tuple[float, float]:
    """Where a player at (x, y) holding the stick at (move_x, move_y) is after ``dt``:
    each axis moves on its own so that a player slides along a wall."""
    length = math.hypot(move_x, move_y)
    if length > 1.0:
        move_x, move_y = move_x / length, move_y / length
    if move_x:
        nx = x + move_x * SPEED * dt
        if not _blocked(nx, y, PLAYER_RADIUS):
            x = nx
    if move_y:
        ny = y + move_y * SPEED * dt
        if not _blocked(x, ny, PLAYER_RADIUS):
            y = ny
    return x, y


class Arena(GameMode):
    key: ClassVar[str] = "arena"
    title: ClassVar[str] = "Arena"
    tick_rate: ClassVar[int] = 20
    min_players: ClassVar[int] = 2
    max_players: ClassVar[int] = 10
    max_inputs_per_second: ClassVar[int] = 60

    def __init__(self, *, round_seconds: float = ROUND_SECONDS) -> None:
        self.round_seconds = round_seconds

    def initial_state(self, players: list[str], *, seed: int) -> ArenaState:
        if not self.min_players <= len(players) <= self.max_players:
            raise ValueError(f"arena takes {self.min_players}-{self.max_players} players, not {len(players)}")
        rng = random.Random(seed)
        spawns = list(SPAWNS)
        rng.shuffle(spawns)
        placed = {
            player: Player(player, x, y, aim=math.atan2(HEIGHT / 2 - y, WIDTH / 2 - x))
            for player, (x, y) in zip(players, spawns, strict=False)
        }
        pickups = [Pickup(n + 1, x, y) for n, (x, y) in enumerate(PICKUPS)]
        return ArenaState(placed, pickups, rng, time_left=self.round_seconds)

    def validate_input(self, state: ArenaState, player: str, frame: dict[str, Any]) -> ArenaInput:
        known = {"type", "seq", "move", "aim", "shoot"}
        unknown = sorted(set(frame) - known)
        if unknown:
            raise InputRefused(unknown[0], "is not a field of an arena input")
        stick = frame.get("move", [0, 0])
        if not isinstance(stick, list) or len(stick) != 2:
            raise InputRefused("move", "must be [x, y]")
        move_x = finite_number({"move.x": stick[0]}, "move.x", -1.0, 1.0)
        move_y = finite_number({"move.y": stick[1]}, "move.y", -1.0, 1.0)
        aim = finite_number(frame, "aim", -math.pi, math.pi) if "aim" in frame else state.players[player].aim
        shoot = frame.get("shoot", False)
        if not isinstance(shoot, bool):
            raise InputRefused("shoot", "must be true or false")
        body = state.players[player]
        if body.forfeited:
            raise InputRefused("player", "has left the match")
        if not body.alive and (shoot or move_x or move_y):
            raise InputRefused("player", "is waiting to respawn")
        return ArenaInput(move_x, move_y, aim, shoot)

    def apply_input(self, state: ArenaState, player: str, command: ArenaInput) -> None:
        body = state.players[player]
        body.move_x, body.move_y, body.aim, body.shooting = (
            command.move_x,
            command.move_y,
            command.aim,
            command.shoot,
        )

    def step(self, state: ArenaState, dt: float) -> None:
        state.events = []
        # rounded: 2,400 ticks of 1/20 s must end a 120 s round exactly
        state.time_left = max(0.0, round(state.time_left - dt, 6))
        for body in state.players.values():
            if body.forfeited:
                continue
            if not body.alive:
                body.respawn_in -= dt
                if body.respawn_in <= 0:
                    self._respawn(state, body)
                continue
            body.x, body.y = move(body.x, body.y, body.move_x, body.move_y, dt)
            body.cooldown = max(0.0, body.cooldown - dt)
            if body.shooting and body.cooldown <= 0:
                self._shoot(state, body)
        self._bullets(state, dt)
        self._pickups(state, dt)

    def _shoot(self, state: ArenaState, body: Player) -> None:
        body.cooldown = SHOT_COOLDOWN
        dx, dy = math.cos(body.aim), math.sin(body.aim)
        start = PLAYER_RADIUS + 4
        state.bullets.append(
            Bullet(
                state.next_bullet,
                body.id,
                body.x + dx * start,
                body.y + dy * start,
                dx * BULLET_SPEED,
                dy * BULLET_SPEED,
            )
        )
        state.next_bullet += 1

    def _bullets(self, state: ArenaState, dt: float) -> None:
        flying = []
        for bullet in state.bullets:
            bullet.x += bullet.vx * dt
            bullet.y += bullet.vy * dt
            bullet.life -= dt
            if bullet.life <= 0 or _blocked(bullet.x, bullet.y, 2.0):
                continue
            hit = next(
                (
                    p
                    for p in state.players.values()
                    if p.alive
                    and p.id != bullet.owner
                    and math.hypot(p.x - bullet.x, p.y - bullet.y) <= PLAYER_RADIUS
                ),
                None,
            )
            if hit is None:
                flying.append(bullet)
                continue
            hit.health -= BULLET_DAMAGE
            if hit.health <= 0:
                hit.health, hit.respawn_in = 0, RESPAWN_SECONDS
                hit.deaths += 1
                hit.move_x = hit.move_y = 0.0
                hit.shooting = False
                shooter = state.players.get(bullet.owner)
                if shooter is not None:
                    shooter.kills += 1
                state.events.append({"kind": "eliminated", "player": hit.id, "by": bullet.owner})
        state.bullets = flying

    def _pickups(self, state: ArenaState, dt: float) -> None:
        for pickup in state.pickups:
            if pickup.respawn_in > 0:
                pickup.respawn_in = max(0.0, pickup.respawn_in - dt)
                continue
            for body in state.players.values():
                if (
                    body.alive
                    and body.health < MAX_HEALTH
                    and math.hypot(body.x - pickup.x, body.y - pickup.y) <= PLAYER_RADIUS + 12
                ):
                    body.health = min(MAX_HEALTH, body.health + PICKUP_HEAL)
                    pickup.respawn_in = PICKUP_RESPAWN_SECONDS
                    state.events.append({"kind": "healed", "player": body.id})
                    break

    def _respawn(self, state: ArenaState, body: Player) -> None:
        others = [p for p in state.players.values() if p.alive and p.id != body.id]

        def distance(spot: tuple[float, float]) -> float:
            return min((math.hypot(spot[0] - p.x, spot[1] - p.y) for p in others), default=0.0)

        body.x, body.y = max(SPAWNS, key=distance)
        body.health, body.respawn_in, body.cooldown = MAX_HEALTH, 0.0, 0.0

    def is_over(self, state: ArenaState) -> bool:
        standing = [p for p in state.players.values() if not p.forfeited]
        return state.time_left <= 0 or len(standing) < 2

    def result(self, state: ArenaState) -> Result:
        def order(p: Player) -> tuple[int, int, int]:
            return (1 if p.forfeited else 0, -p.kills, p.deaths)

        ranked = sorted(state.players.values(), key=order)
        standings: list[Standing] = []
        for index, body in enumerate(ranked):
            tied = standings and order(ranked[index - 1]) == order(body)
            rank = standings[-1].rank if tied else index + 1
            standings.append(Standing(body.id, rank, body.kills, body.forfeited))
        return Result(standings, {"rounds_seconds": self.round_seconds})

    def forfeit(self, state: ArenaState, player: str) -> None:
        body = state.players.get(player)
        if body is not None:
            body.forfeited = True
            body.move_x = body.move_y = 0.0
            body.shooting = False

    def snapshot(self, state: ArenaState) -> dict[str, Any]:
        return {
            "time_left": round(state.time_left, 2),
            "players": {
                p.id: {
                    "x": round(p.x, 1),
                    "y": round(p.y, 1),
                    "aim": round(p.aim, 3),
                    "hp": p.health,
                    "kills": p.kills,
                    "deaths": p.deaths,
                    "alive": p.alive,
                    "left": p.forfeited,
                }
                for p in state.players.values()
            },
            "bullets": {
                str(b.id): {"x": round(b.x, 1), "y": round(b.y, 1), "vx": round(b.vx), "vy": round(b.vy)}
                for b in state.bullets
            },
            "pickups": {str(p.id): {"x": p.x, "y": p.y, "up": p.respawn_in <= 0} for p in state.pickups},
        }
