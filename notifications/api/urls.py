"""Routes of the v1 API, one module per resource. Path parameters use the converters of
api/common.py, whose patterns the schema states (PATH_PARAMETERS)."""

from django.urls import path, re_path, register_converter

from notifications.api import (
    campaigns,
    deadletters,
    events,
    inbox,
    preferences,
    presence,
    recipients,
    reminders,
    suppressions,
    topics,
    types,
    webhooks,
)
from notifications.api.common import NotFoundView
from notifications.api.schema import AddressConverter, IdConverter, SegmentConverter

register_converter(SegmentConverter, "segment")
register_converter(IdConverter, "id")
register_converter(AddressConverter, "address")

urlpatterns = [
    # Before recipients/<external_id>/: "bulk" is reserved (the schema says so).
    path("recipients/bulk/", recipients.RecipientBulkView.as_view(), name="recipients-bulk"),
    path("recipients/<segment:external_id>/", recipients.RecipientView.as_view(), name="recipient"),
    path(
        "recipients/<segment:external_id>/devices/", recipients.DeviceView.as_view(), name="recipient-devices"
    ),
    path("recipients/<segment:external_id>/token/", recipients.TokenView.as_view(), name="recipient-token"),
    path(
        "recipients/<segment:external_id>/preferences/",
        preferences.PreferencesView.as_view(),
        name="recipient-preferences",
    ),
    path(
        "recipients/<segment:external_id>/webhooks/",
        webhooks.WebhookEndpointListView.as_view(),
        name="recipient-webhooks",
    ),
    path(
        "recipients/<segment:external_id>/webhooks/<id:endpoint_id>/",
        webhooks.WebhookEndpointDetailView.as_view(),
        name="recipient-webhook",
    ),
    path("notification-types/", types.NotificationTypeListView.as_view(), name="notification-types"),
    path(
        "notification-types/<segment:key>/",
        types.NotificationTypeDetailView.as_view(),
        name="notification-type",
    ),
    path("topics/<segment:key>/", topics.TopicView.as_view(), name="topic"),
    path(
        "topics/<segment:key>/subscribers/", topics.TopicSubscribersView.as_view(), name="topic-subscribers"
    ),
    path("reminders/", reminders.ReminderListView.as_view(), name="reminders"),
    path("campaigns/", campaigns.CampaignListView.as_view(), name="campaigns"),
    path("campaigns/<id:campaign_id>/", campaigns.CampaignDetailView.as_view(), name="campaign"),
    path("campaigns/<id:campaign_id>/start/", campaigns.CampaignStartView.as_view(), name="campaign-start"),
    path("campaigns/<id:campaign_id>/pause/", campaigns.CampaignPauseView.as_view(), name="campaign-pause"),
    path(
        "campaigns/<id:campaign_id>/resume/", campaigns.CampaignResumeView.as_view(), name="campaign-resume"
    ),
    path(
        "campaigns/<id:campaign_id>/cancel/", campaigns.CampaignCancelView.as_view(), name="campaign-cancel"
    ),
    path("segments/", campaigns.SegmentListView.as_view(), name="segments"),
    path("segments/<id:segment_id>/", campaigns.SegmentDetailView.as_view(), name="segment"),
    path("reminders/<segment:reminder_id>/", reminders.ReminderDetailView.as_view(), name="reminder"),
    path("events/", events.EventListView.as_view(), name="events"),
    path("events/bulk/", events.EventBulkView.as_view(), name="events-bulk"),
    path("events/<segment:event_id>/", events.EventDetailView.as_view(), name="event"),
    path(
        "events/<segment:event_id>/deliveries/", events.EventDeliveriesView.as_view(), name="event-deliveries"
    ),
    path("dead-letters/", deadletters.DeadLetterListView.as_view(), name="dead-letters"),
    path("dead-letters/replay/", deadletters.DeadLetterReplayView.as_view(), name="dead-letters-replay"),
    path(
        "dead-letters/<id:delivery_id>/replay/",
        deadletters.DeadLetterReplayOneView.as_view(),
        name="dead-letter-replay",
    ),
    path("suppressions/", suppressions.SuppressionListView.as_view(), name="suppressions"),
    path(
        "suppressions/<segment:kind>/<address:address>/",
        suppressions.SuppressionDetailView.as_view(),
        name="suppression",
    ),
    path("presence/", presence.PresenceView.as_view(), name="presence"),
    path("inbox/", inbox.InboxView.as_view(), name="inbox"),
    path("inbox/unread-count/", inbox.InboxUnreadCountView.as_view(), name="inbox-unread-count"),
    path("inbox/poll/", inbox.InboxPollView.as_view(), name="inbox-poll"),
    path("inbox/<id:item_id>/read/", inbox.InboxReadView.as_view(), name="inbox-read"),
    path("inbox/<id:item_id>/unread/", inbox.InboxUnreadView.as_view(), name="inbox-unread"),
    path("inbox/<id:item_id>/archive/", inbox.InboxArchiveView.as_view(), name="inbox-archive"),
    path("inbox/<id:item_id>/unarchive/", inbox.InboxUnarchiveView.as_view(), name="inbox-unarchive"),
    path("inbox/<id:item_id>/snooze/", inbox.InboxSnoozeView.as_view(), name="inbox-snooze"),
    path("inbox/read-all/", inbox.InboxReadAllView.as_view(), name="inbox-read-all"),
    # Last: any other path under /api/v1/ is a 404 in the API's error shape ([\s\S]: a
    # decoded %0A is a path character too, and "." would not match it).
    re_path(r"^[\s\S]*$", NotFoundView.as_view(), name="api-not-found"),
]
