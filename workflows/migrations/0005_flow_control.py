"""Flow control, part 1 (issue 12): each run's concurrency groups, throttle key and
reservation, priority and place in line; the throttle state of each key."""

import django.utils.timezone
from django.db import migrations, models



def line_up_active_runs(apps, schema_editor):
    """Runs that exist already keep their place: in line by when they were created."""
    WorkflowRun = apps.get_model("workflows", "WorkflowRun")
    active = ["paused", "queued", "running", "sleeping", "waiting"]
    WorkflowRun.objects.filter(status__in=active).update(order_at=models.F("created_at"))


class Migration(migrations.Migration):

    dependencies = [
        ('eventbus', '0003_event_api'),
        ('workflows', '0004_lost_executions_and_replays'),
    ]

    operations = [
        migrations.CreateModel(
            name='ThrottleState',
            fields=[
                ('key', models.CharField(max_length=300, primary_key=True, serialize=False)),
                ('next_at', models.DateTimeField()),
            ],
            options={
                'verbose_name': 'throttle',
            },
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='held_by',
            field=models.CharField(blank=True, default='', help_text='What held the run back last time it could have started.', max_length=400),
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='order_at',
            field=models.DateTimeField(default=django.utils.timezone.now, help_text='Its place in line to start: created_at less priority.'),
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='priority',
            field=models.SmallIntegerField(default=0, help_text='Seconds the run is moved ahead (+) or back (-) in line.'),
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='slot_1',
            field=models.CharField(blank=True, default='', help_text='The group of the first concurrency limit the run counts against.', max_length=400),
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='slot_2',
            field=models.CharField(blank=True, default='', help_text='The group of the second concurrency limit, if there are two.', max_length=400),
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='throttle_at',
            field=models.DateTimeField(blank=True, help_text='The first start the throttle reserved for the run (it may start then).', null=True),
        ),
        migrations.AddField(
            model_name='workflowrun',
            name='throttle_key',
            field=models.CharField(blank=True, default='', help_text='The throttle group of the run.', max_length=300),
        ),
        migrations.AddIndex(
            model_name='workflowrun',
            index=models.Index(condition=models.Q(('slot_1', ''), _negated=True), fields=['slot_1', 'status', 'order_at'], name='workflows_run_slot_1'),
        ),
        migrations.AddIndex(
            model_name='workflowrun',
            index=models.Index(condition=models.Q(('slot_2', ''), _negated=True), fields=['slot_2', 'status', 'order_at'], name='workflows_run_slot_2'),
        ),
        migrations.RunPython(line_up_active_runs, migrations.RunPython.noop),
    ]
