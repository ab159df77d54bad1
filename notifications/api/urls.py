from django.urls import path

from notifications.api import views

urlpatterns = [
    path("recipients/<str:external_id>/", views.RecipientView.as_view(), name="recipient"),
    path("recipients/<str:external_id>/devices/", views.DeviceView.as_view(), name="recipient-devices"),
    path("recipients/<str:external_id>/token/", views.TokenView.as_view(), name="recipient-token"),
    path(
        "recipients/<str:external_id>/preferences/",
        views.PreferencesView.as_view(),
        name="recipient-preferences",
    ),
    path(
        "recipients/<str:external_id>/webhooks/",
        views.WebhookEndpointListView.as_view(),
        name="recipient-webhooks",
    ),
    path(
        "recipients/<str:external_id>/webhooks/<int:endpoint_id>/",
        views.WebhookEndpointDetailView.as_view(),
        name="recipient-webhook",
    ),
    path("notification-types/", views.NotificationTypeListView.as_view(), name="notification-types"),
    path(
        "notification-types/<str:key>/", views.NotificationTypeDetailView.as_view(), name="notification-type"
    ),
    path("topics/<str:key>/", views.TopicView.as_view(), name="topic"),
    path("topics/<str:key>/subscribers/", views.TopicSubscribersView.as_view(), name="topic-subscribers"),
    path("events/", views.EventListView.as_view(), name="events"),
    path("events/<str:event_id>/", views.EventDetailView.as_view(), name="event"),
    path("events/<str:event_id>/deliveries/", views.EventDeliveriesView.as_view(), name="event-deliveries"),
    path("dead-letters/", views.DeadLetterListView.as_view(), name="dead-letters"),
    path("dead-letters/replay/", views.DeadLetterReplayView.as_view(), name="dead-letters-replay"),
    path(
        "dead-letters/<int:delivery_id>/replay/",
        views.DeadLetterReplayOneView.as_view(),
        name="dead-letter-replay",
    ),
    path("suppressions/", views.SuppressionListView.as_view(), name="suppressions"),
    path(
        "suppressions/<str:kind>/<str:address>/",
        views.SuppressionDetailView.as_view(),
        name="suppression",
    ),
    path("inbox/", views.InboxView.as_view(), name="inbox"),
    path("inbox/unread-count/", views.InboxUnreadCountView.as_view(), name="inbox-unread-count"),
    path("inbox/<int:item_id>/read/", views.InboxReadView.as_view(), name="inbox-read"),
    path("inbox/read-all/", views.InboxReadAllView.as_view(), name="inbox-read-all"),
]
