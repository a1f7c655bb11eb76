"""Reserved for observability (issue 16)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("workflows", "0006_admission")]

    operations = []
