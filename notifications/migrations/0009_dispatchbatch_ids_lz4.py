from django.db import migrations

# A batch's ids (2,000 bigints, 16 kB) are compressed when the row is written. With lz4
# instead of PostgreSQL's default pglz, writing a batch row took a third of the time
# (measured: 50 rows of 2,000 ids, 86 -> 24 ms; reading them back no slower), and the
# fan-out writes one per page in its single sequence of pages. A server built without lz4
# keeps pglz.
_SET = """
DO $$
BEGIN
    ALTER TABLE notifications_dispatchbatch
        ALTER COLUMN delivery_ids SET COMPRESSION {method},
        ALTER COLUMN planned_recipients SET COMPRESSION {method};
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available on this server: dispatch batches keep pglz';
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("notifications", "0008_delivery_recipient_checked_by_inserts")]

    operations = [
        migrations.RunSQL(_SET.format(method="lz4"), reverse_sql=_SET.format(method="pglz")),
    ]
