"""The sandbox's HTTP port: one aiohttp application serving Google OAuth + FCM, Twilio,
Mailgun, the webhook receiver and the control API."""

from __future__ import annotations

from aiohttp import web

from sandbox.context import SandboxContext
from sandbox.control import ControlApi
from sandbox.google import GoogleApi
from sandbox.hooks import WebhookReceiver
from sandbox.mailgun_api import MailgunApi
from sandbox.outbound import CallbackQueue
from sandbox.twilio_api import TwilioApi

# Mailgun accepts messages up to 25 MB with attachments.
MAX_REQUEST_BYTES = 30 * 1024 * 1024


def http_app_build(context: SandboxContext, callbacks: CallbackQueue) -> web.Application:
    """The aiohttp application of the HTTP port (serve it with ``access_log=None``: an access
    log line per request costs more than the request at benchmark rates)."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    for api in (
        GoogleApi(context),
        TwilioApi(context, callbacks),
        MailgunApi(context, callbacks),
        WebhookReceiver(context),
        ControlApi(context, callbacks),
    ):
        app.add_routes(api.routes())
    return app
