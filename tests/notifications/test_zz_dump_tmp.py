from tests.notifications.test_admin import *  # noqa
from tests.notifications.test_admin import pipeline  # noqa

def test_dump(admin_client, pipeline):
    html = admin_client.get(reverse("admin:notifications_event_change", args=[pipeline.event.pk])).content.decode()
    start = html.index('<div class="event-pipeline">')
    print(html[html.index('<fieldset class="module aligned">'):start+4000])
