"""The HTTP event API (issue 15): filled in by the change that adds keys and webhooks."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0002_drop_source_foreign_keys")]

    operations = []
