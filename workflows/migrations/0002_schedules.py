"""Schedules (issue 14): filled in by the change that adds the Schedule model."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("workflows", "0001_squashed_0004_fewer_indexes")]

    operations = []
