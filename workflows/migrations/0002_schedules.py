"""Schedules (issue 14): the Schedule model, cron schedules of workflows."""

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("eventbus", "0001_squashed_0005_coordination"),
        ("workflows", "0001_squashed_0004_fewer_indexes"),
    ]

    operations = [
        migrations.CreateModel(
            name='Schedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('schedule_id', models.CharField(max_length=200, unique=True)),
                ('workflow_id', models.CharField(max_length=200)),
                ('cron', models.TextField(help_text='Cron entries, one per line, each as declared.')),
                ('data', models.JSONField(blank=True, default=dict, help_text="Sent as the runs' payload.")),
                ('source', models.CharField(choices=[('code', '@workflow(cron=…)'), ('database', 'workflows.schedules')], default='database', max_length=16)),
                ('paused', models.BooleanField(default=False)),
                ('next_fire_at', models.DateTimeField(blank=True, help_text='The next slot.', null=True)),
                ('last_fired_at', models.DateTimeField(blank=True, help_text='The slot of the latest run it started.', null=True)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('workspace', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='schedules', to='eventbus.workspace')),
            ],
            options={
                'ordering': ['schedule_id'],
                'permissions': [('pause_schedule', 'Can pause schedules'), ('resume_schedule', 'Can resume schedules'), ('trigger_schedule', 'Can trigger schedules')],
                'indexes': [models.Index(condition=models.Q(('next_fire_at__isnull', False)), fields=['next_fire_at'], name='workflows_schedule_due')],
            },
        ),
    ]
