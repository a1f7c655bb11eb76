"""The HTTP event API (issue 15): event keys (only their hash) and webhooks."""

import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0002_drop_source_foreign_keys")]

    operations = [
        migrations.CreateModel(
            name="EventKey",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(blank=True, help_text="A label for people.", max_length=200)),
                ("key_hash", models.CharField(editable=False, max_length=64, unique=True)),
                ("prefixes", models.JSONField(blank=True, default=list, help_text="Event name prefixes this key may send; empty: any name.")),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("last_used_at", models.DateTimeField(blank=True, help_text="Last accepted request (to the minute).", null=True)),
                ("workspace", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="event_keys", to="eventbus.workspace")),
            ],
            options={
                "verbose_name": "event key",
                "ordering": ["-created_at"],
            },
        ),
        migrations.CreateModel(
            name="Webhook",
            fields=[
                ("id", models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ("name", models.CharField(blank=True, help_text="A label for people.", max_length=200)),
                ("event_name", models.CharField(help_text="The name of the event the default transform sends.", max_length=255)),
                ("transform", models.CharField(blank=True, help_text="Dotted path to a function (request) -> list of event dicts; blank: default.", max_length=255)),
                ("scheme", models.CharField(choices=[("hmac-sha256", "HMAC-SHA256 (GitHub: X-Hub-Signature-256)"), ("stripe", "Stripe (Stripe-Signature)")], max_length=16)),
                ("secret", models.CharField(help_text="The signing secret the provider shows (kept to verify).", max_length=255)),
                ("enabled", models.BooleanField(default=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("last_used_at", models.DateTimeField(blank=True, null=True)),
                ("workspace", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="webhooks", to="eventbus.workspace")),
            ],
            options={
                "ordering": ["-created_at"],
            },
        ),
    ]
