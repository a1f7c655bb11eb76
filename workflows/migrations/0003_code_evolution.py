"""Code evolution (issue 17): filled in by the change that adds versions and pausing."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("workflows", "0002_schedules")]

    operations = []
