"""The provider sandbox: local servers that speak each external provider's wire protocol.

``manage.py provider_sandbox`` runs, in one process on one asyncio loop, the Google OAuth
token endpoint and FCM HTTP v1, APNs (HTTP/2 over TLS), the Twilio Messages API, Mailgun's
send API, a generic webhook receiver and an SMTP server. The platform's real client
libraries are pointed at it (``project.settings.providers``). It records every request,
answers scripted faults (magic tokens, addresses and numbers, and faults set through its
control API under ``/_sandbox/``) and sends the provider callbacks a real provider would
(Twilio status callbacks, Mailgun tracking webhooks), signed the way the provider signs them.

Nothing here imports Django models: the sandbox is independent of the platform's database.
"""
