"""Nothing wedges a run (issue 11): lost executions count as tries (a worker that dies
in a step every time); replays stay replays when the run they replayed is purged (the
once-per-event constraint no longer depends on ``replay_of``, which a purge empties);
invoke depth; paused workflows and the record of events they skipped; the size of each
step's output (large outputs are read one at a time on replay)."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


def mark_replays(apps, schema_editor):
    WorkflowRun = apps.get_model("workflows", "WorkflowRun")
    WorkflowRun.objects.filter(replay_of__isnull=False).update(is_replay=True)


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0003_event_api"), ("workflows", "0003_code_evolution")]

    operations = [
        migrations.AddField(
            model_name="workflowrun",
            name="is_replay",
            field=models.BooleanField(
                default=False,
                help_text="Started by a replay (stays true when the replayed run is purged).",
            ),
        ),
        migrations.AddField(
            model_name="workflowrun",
            name="lost_executions",
            field=models.PositiveIntegerField(
                default=0,
                help_text="Executions lost with their worker since the last step was "
                "recorded; the next step body counts each as one of its tries.",
            ),
        ),
        migrations.RunPython(mark_replays, migrations.RunPython.noop),
        migrations.RemoveConstraint(
            model_name="workflowrun",
            name="workflows_run_once_per_event",
        ),
        migrations.AddConstraint(
            model_name="workflowrun",
            constraint=models.UniqueConstraint(
                condition=models.Q(("branch_index__isnull", True), ("is_replay", False)),
                fields=("event", "workflow_id"),
                name="workflows_run_once_per_event",
            ),
        ),
        migrations.AddField(
            model_name="workflowrun",
            name="depth",
            field=models.PositiveIntegerField(
                default=0, help_text="How deep in a chain of step.invoke (0: started by an event)."
            ),
        ),
        migrations.CreateModel(
            name="EventSkip",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("workflow_id", models.CharField(max_length=200)),
                ("reason", models.CharField(choices=[("paused", "the workflow was paused")], max_length=32)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("event", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="skips", to="eventbus.event")),
            ],
            options={"ordering": ["created_at"]},
        ),
        migrations.CreateModel(
            name="PausedWorkflow",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("workflow_id", models.CharField(max_length=200)),
                ("paused_at", models.DateTimeField(default=django.utils.timezone.now)),
                ("workspace", models.ForeignKey(blank=True, help_text="Empty: paused in every workspace.", null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+", to="eventbus.workspace")),
            ],
            options={
                "verbose_name": "workflow",
                "verbose_name_plural": "workflows (pause and resume)",
                "permissions": [("pause_workflow", "Can pause and resume workflows")],
                "constraints": [
                    models.UniqueConstraint(fields=("workflow_id", "workspace"), name="workflows_paused_unique"),
                    models.UniqueConstraint(condition=models.Q(("workspace__isnull", True)), fields=("workflow_id",), name="workflows_paused_everywhere_unique"),
                ],
            },
        ),
        migrations.AddField(
            model_name="stepresult",
            name="output_bytes",
            field=models.PositiveBigIntegerField(
                default=0, help_text="Size of the encoded output (0 when not measured)."
            ),
        ),
    ]
