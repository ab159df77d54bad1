"""The game's page, ``/play/``: find a match, play it on a canvas, see the leaderboard.
The server says who the player is and the arena's layout; the play itself happens over the
REST API and the match socket, from gaming/static/gaming/play.js."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from gaming.modes import arena
from gaming.services.rtc import ice_servers
from notifications.selectors import recipient_for_user


def arena_layout() -> dict[str, object]:
    """What the client needs to draw the arena and predict its own player's movement with
    the server's own rule (gaming/modes/arena.py ``move``)."""
    return {
        "width": arena.WIDTH,
        "height": arena.HEIGHT,
        "radius": arena.PLAYER_RADIUS,
        "speed": arena.SPEED,
        "walls": [list(w) for w in arena.WALLS],
        "tick_rate": arena.Arena.tick_rate,
        "max_health": arena.MAX_HEALTH,
        # State over a WebRTC data channel beside the socket (gaming/services/rtc.py).
        "rtc": {"enabled": settings.GAMING_RTC, "ice_servers": ice_servers()},
    }


@require_GET
@login_required
def play_page(request: HttpRequest) -> HttpResponse:
    recipient = recipient_for_user(user=request.user)
    if recipient is None:
        return render(request, "notifications/no_inbox.html", status=404)
    context = {
        "me_id": recipient.external_id,
        "me_name": recipient.name or recipient.external_id,
        "layout": arena_layout(),
    }
    return render(request, "gaming/play.html", context)
