"""Reserved for the trace context stored with each event (issue 16)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0003_event_api")]

    operations = []
