"""Room on each page of the deliveries table for the new versions of its rows.

A delivery is updated several times after it is written (claimed, recorded, moved by each
receipt), never on an indexed column: with free space on its page, PostgreSQL writes the
new version there without touching the table's three indexes (a heap-only update). At the
default fill factor (100) the pages of freshly written deliveries are full, so every one
of those updates also inserted into every index."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("notifications", "0019_provider_cursor")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE notifications_delivery SET (fillfactor = 70)",
            reverse_sql="ALTER TABLE notifications_delivery RESET (fillfactor)",
        ),
    ]
