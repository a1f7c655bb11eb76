"""Reserved for admission (issue 13)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("workflows", "0005_flow_control")]

    operations = []
