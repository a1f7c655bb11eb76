"""The trace context stored with each event (issue 16)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0003_event_api")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="trace_context",
            field=models.JSONField(
                blank=True,
                help_text="The W3C trace context current when the event was sent (OpenTelemetry).",
                null=True,
            ),
        ),
    ]
