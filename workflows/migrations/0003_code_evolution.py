"""Code evolution (issue 17): the version label of runs, the ``paused`` status, the
``patch`` step kind (``ctx.patched`` markers) and the ``resume_run`` permission.

The partial indexes on ``due_at`` and ``timeout_at`` keep their condition: paused runs
are not in them (nothing is due for a paused run, and no timeout runs out on it)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("workflows", "0002_schedules")]

    operations = [
        migrations.AlterModelOptions(
            name="workflowrun",
            options={
                "ordering": ["-created_at"],
                "permissions": [
                    ("replay_run", "Can replay runs"),
                    ("cancel_run", "Can cancel runs"),
                    ("resume_run", "Can resume paused runs"),
                ],
            },
        ),
        migrations.AddField(
            model_name="workflowrun",
            name="version",
            field=models.CharField(
                blank=True,
                default="",
                help_text="The workflow's version label (@workflow(version=…)) when the run began.",
                max_length=100,
            ),
        ),
        migrations.AlterField(
            model_name="stepresult",
            name="kind",
            field=models.CharField(
                choices=[
                    ("run", "run"),
                    ("send_event", "send_event"),
                    ("sleep", "sleep"),
                    ("invoke", "invoke"),
                    ("wait_for_event", "wait_for_event"),
                    ("parallel", "parallel"),
                    ("patch", "patch"),
                ],
                max_length=16,
            ),
        ),
        migrations.AlterField(
            model_name="workflowrun",
            name="status",
            field=models.CharField(
                choices=[
                    ("queued", "Queued"),
                    ("running", "Running"),
                    ("sleeping", "Sleeping"),
                    ("waiting", "Waiting"),
                    ("completed", "Completed"),
                    ("failed", "Failed"),
                    ("cancelled", "Cancelled"),
                    ("paused", "Paused"),
                ],
                default="queued",
                max_length=16,
            ),
        ),
    ]
