from __future__ import annotations

import uuid
from typing import Any, Generic, TypeVar, cast

import factory

from notifications.models import (
    Category,
    NotificationTemplate,
    NotificationType,
    Recipient,
    Subscription,
    Topic,
)


class _NotificationTypeFactory(factory.django.DjangoModelFactory[NotificationType]):
    class Meta:
        model = NotificationType
        skip_postgeneration_save = True

    key = factory.Sequence(lambda n: f"type.{n}.{uuid.uuid4().hex[:6]}")
    category = Category.TRANSACTIONAL
    channels = factory.LazyFunction(lambda: ["inapp"])

    @factory.post_generation
    def inapp_template(self, create: bool, extracted: dict[str, str] | None, **kwargs: object) -> None:
        instance = cast(NotificationType, self)
        if create:
            NotificationTemplate.objects.create(
                notification_type=instance,
                channel="inapp",
                locale=instance.default_locale,
                content=extracted or {"title": "Order {{ data.order_id }}", "body": "shipped", "url": ""},
            )


class _RecipientFactory(factory.django.DjangoModelFactory[Recipient]):
    class Meta:
        model = Recipient

    external_id = factory.LazyFunction(lambda: f"user-{uuid.uuid4().hex[:10]}")
    name = "Test User"
    timezone = "UTC"


class _TopicFactory(factory.django.DjangoModelFactory[Topic]):
    class Meta:
        model = Topic

    key = factory.LazyFunction(lambda: f"topic-{uuid.uuid4().hex[:8]}")


class _SubscriptionFactory(factory.django.DjangoModelFactory[Subscription]):
    class Meta:
        model = Subscription

    topic = factory.SubFactory(_TopicFactory)
    recipient = factory.SubFactory(_RecipientFactory)


T = TypeVar("T")


class _Typed(Generic[T]):
    """factory_boy classes return ``Any`` to type checkers; this keeps tests typed."""

    def __init__(self, factory_class: Any) -> None:
        self.factory_class = factory_class

    def __call__(self, **kwargs: Any) -> T:
        return cast(T, self.factory_class(**kwargs))


NotificationTypeFactory: _Typed[NotificationType] = _Typed(_NotificationTypeFactory)
RecipientFactory: _Typed[Recipient] = _Typed(_RecipientFactory)
TopicFactory: _Typed[Topic] = _Typed(_TopicFactory)
SubscriptionFactory: _Typed[Subscription] = _Typed(_SubscriptionFactory)


def pending_inapp(event: Any) -> list[int]:
    """Store an accepted event's planned deliveries pending, each channel's in a dispatch
    batch of delivery ids, without fanning it out: how a fallback to in-app or a batch of
    many small events leaves in-app rows for the queue. Returns the in-app rows' ids."""
    from django.db import transaction
    from django.utils import timezone

    from notifications.models import Delivery
    from notifications.services.deliveries import deliveries_store
    from notifications.services.planning import RecipientFacts, plan_page

    facts = [
        RecipientFacts(*row)
        for row in Recipient.objects.filter(id__in=event.recipient_ids or [])
        .order_by("id")
        .values_list("id", "timezone", "quiet_hours_start", "quiet_hours_end")
    ]
    now = timezone.now()
    planned = plan_page(notification_type=event.notification_type, recipients=facts, now=now)
    with transaction.atomic():
        deliveries_store(
            notification_type=event.notification_type,
            event_ids=[event.id] * len(planned),
            planned=planned,
            now=now,
        )
    return list(
        Delivery.objects.filter(event=event, channel="inapp", status="pending")
        .order_by("id")
        .values_list("id", flat=True)
    )
