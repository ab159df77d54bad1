from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

import collaboration.views as collaboration_pages
import gaming.views as gaming_pages
import notifications.observability as observability
import notifications.preference_pages as preference_pages
import notifications.provider_webhooks as provider_webhooks
import notifications.views as pages
import streaming.views as streaming_pages
from collaboration import urls as collaboration_urls
from gaming import urls as gaming_urls
from iot import page_urls as iot_page_urls
from iot import urls as iot_urls
from notifications.api import urls as api_urls
from streaming import urls as streaming_urls

urlpatterns = [
    path("", pages.home, name="home"),
    path("admin/", admin.site.urls),
    # Before the v1 routes: their catch-all answers any other path under /api/v1/.
    path("api/v1/documents/", include(collaboration_urls)),
    path("api/v1/iot/", include(iot_urls)),
    path("api/v1/", include(gaming_urls)),
    path("api/v1/streams/", include(streaming_urls)),
    path("api/v1/", include(api_urls)),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(
            authentication_classes=[],
            permission_classes=[],
            # OpenAPI 3.1 (JSON Schema 2020-12) can say what 3.0 cannot, such as the keys an
            # object may have (notifications/api/common.py, JSON_VALUE_SCHEMA).
            custom_settings={"OAS_VERSION": "3.1.0"},
        ),
        name="schema",
    ),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="api-docs",
    ),
    path("healthz", observability.healthz, name="healthz"),
    path("metrics", observability.metrics, name="metrics"),
    path("inbox/", pages.inbox_page, name="inbox"),
    path("inbox/token/", pages.inbox_token, name="inbox-token"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("docs/", collaboration_pages.documents_page, name="documents-page"),
    path("docs/<str:key>/", collaboration_pages.document_page, name="document-page"),
    path("iot/", include(iot_page_urls)),
    path("play/", gaming_pages.play_page, name="play"),
    path("live/<str:key>/", streaming_pages.live_page, name="live-page"),
    path("sse/inbox/", pages.sse_inbox, name="sse-inbox"),
    path("unsubscribe/<str:token>/", pages.unsubscribe, name="unsubscribe"),
    path("preferences/", preference_pages.preferences_page, name="preferences"),
    path(
        "unsubscribe/<str:token>/preferences/",
        preference_pages.unsubscribe_preferences,
        name="unsubscribe-preferences",
    ),
    path("unsubscribe/<str:token>/undo/", preference_pages.unsubscribe_undo, name="unsubscribe-undo"),
    # Provider callbacks (signed by the provider; no session, no CSRF).
    path("providers/twilio/status/", provider_webhooks.twilio_status, name="twilio-status"),
    path("providers/twilio/inbound/", provider_webhooks.twilio_inbound, name="twilio-inbound"),
    path("anymail/mailgun/tracking/", provider_webhooks.mailgun_tracking, name="mailgun-tracking"),
]
