"""Scheduled events armed with a timed broker message when their ts comes near (issue 18)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('eventbus', '0004_trace_context'),
    ]

    operations = [
        migrations.AddField(
            model_name='event',
            name='armed',
            field=models.BooleanField(db_default=False, default=False, help_text='A timed broker message will emit this scheduled event at its ts.'),
        ),
        migrations.AddIndex(
            model_name='event',
            index=models.Index(condition=models.Q(('armed', False), ('status', 'scheduled')), fields=['ts'], name='eventbus_event_unarmed_ts'),
        ),
    ]
