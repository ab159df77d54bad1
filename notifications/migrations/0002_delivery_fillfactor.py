from django.db import migrations


class Migration(migrations.Migration):
    """Leave a fifth of every delivery page free, so that status changes are HOT updates
    (the new row version fits on the same page and no index entry is written)."""

    dependencies = [("notifications", "0001_initial")]

    operations = [
        migrations.RunSQL(
            "ALTER TABLE notifications_delivery SET (fillfactor = 80)",
            reverse_sql="ALTER TABLE notifications_delivery RESET (fillfactor)",
        )
    ]
