from __future__ import annotations

import uuid

import factory

from notifications.models import (
    Category,
    NotificationTemplate,
    NotificationType,
    Recipient,
    Subscription,
    Topic,
)


class NotificationTypeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = NotificationType
        skip_postgeneration_save = True

    key = factory.Sequence(lambda n: f"type.{n}.{uuid.uuid4().hex[:6]}")
    category = Category.TRANSACTIONAL
    channels = factory.LazyFunction(lambda: ["inapp"])

    @factory.post_generation
    def inapp_template(self, create: bool, extracted: dict[str, str] | None, **kwargs: object) -> None:
        if create:
            NotificationTemplate.objects.create(
                notification_type=self,
                channel="inapp",
                locale=self.default_locale,
                content=extracted or {"title": "Order {{ data.order_id }}", "body": "shipped", "url": ""},
            )


class RecipientFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Recipient

    external_id = factory.LazyFunction(lambda: f"user-{uuid.uuid4().hex[:10]}")
    name = "Test User"
    timezone = "UTC"


class TopicFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Topic

    key = factory.LazyFunction(lambda: f"topic-{uuid.uuid4().hex[:8]}")


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    topic = factory.SubFactory(TopicFactory)
    recipient = factory.SubFactory(RecipientFactory)
