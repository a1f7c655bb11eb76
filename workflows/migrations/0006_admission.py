"""Admission (issue 13): rate limits, singletons, debounces and batches (GateState), the
members of each batch (BatchEvent), idempotency values (IdempotencyRecord), and the new
reasons an event started no run."""

import uuid

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("workflows", "0005_flow_control")]

    operations = [
        migrations.AddField(
            model_name="eventskip",
            name="detail",
            field=models.CharField(
                blank=True,
                default="",
                help_text="Which run or event it gave way to.",
                max_length=300,
            ),
        ),
        migrations.AlterField(
            model_name="eventskip",
            name="reason",
            field=models.CharField(
                choices=[
                    ("paused", "the workflow was paused"),
                    ("rate_limited", "over the workflow's rate limit"),
                    ("debounced", "debounced: a later event took its place"),
                    ("batched", "batched into another event's run"),
                    ("singleton", "skipped: the singleton key had an active run"),
                    ("idempotent", "a duplicate of an event that already started a run"),
                ],
                max_length=32,
            ),
        ),
        migrations.CreateModel(
            name="BatchEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("batch_id", models.UUIDField(default=uuid.uuid4)),
                ("workflow_id", models.CharField(max_length=200)),
                ("position", models.PositiveIntegerField()),
                (
                    "event",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="batch_memberships",
                        to="eventbus.event",
                    ),
                ),
            ],
            options={
                "verbose_name": "batched event",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("batch_id", "position"), name="workflows_batch_position"
                    ),
                    models.UniqueConstraint(
                        fields=("event", "workflow_id"), name="workflows_batch_event_once"
                    ),
                ],
            },
        ),
        migrations.CreateModel(
            name="GateState",
            fields=[
                ("scope", models.CharField(max_length=500, primary_key=True, serialize=False)),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("rate_limit", "rate limit"),
                            ("singleton", "singleton"),
                            ("debounce", "debounce"),
                            ("batch", "batch"),
                        ],
                        max_length=16,
                    ),
                ),
                ("workflow_id", models.CharField(max_length=200)),
                ("stamps", models.JSONField(blank=True, default=list)),
                ("run_id", models.UUIDField(blank=True, null=True)),
                ("batch_id", models.UUIDField(blank=True, null=True)),
                ("size", models.PositiveIntegerField(default=0)),
                ("first_at", models.DateTimeField(blank=True, null=True)),
                ("due_at", models.DateTimeField(blank=True, null=True)),
                (
                    "event",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="eventbus.event",
                    ),
                ),
                (
                    "workspace",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="eventbus.workspace",
                    ),
                ),
            ],
            options={
                "verbose_name": "admission key",
                "indexes": [
                    models.Index(
                        condition=models.Q(("due_at__isnull", False)),
                        fields=["due_at"],
                        name="workflows_gate_due",
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="IdempotencyRecord",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("workflow_id", models.CharField(max_length=200)),
                ("key", models.CharField(max_length=255)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("expires_at", models.DateTimeField()),
                (
                    "event",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="eventbus.event",
                    ),
                ),
                (
                    "workspace",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="eventbus.workspace",
                    ),
                ),
            ],
            options={
                "verbose_name": "idempotency key",
                "indexes": [
                    models.Index(fields=["expires_at"], name="workflows_idempotency_expiry")
                ],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("workflow_id", "workspace", "key"),
                        name="workflows_idempotency_once",
                    )
                ],
            },
        ),
    ]
