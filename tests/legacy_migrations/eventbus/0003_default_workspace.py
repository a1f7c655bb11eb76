"""Create the default workspace (send() also creates it on first use)."""

from django.db import migrations


def create_default(apps, schema_editor):
    Workspace = apps.get_model("eventbus", "Workspace")
    Workspace.objects.get_or_create(
        slug="default", defaults={"name": "Default workspace"}
    )


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0002_initial")]

    operations = [migrations.RunPython(create_default, migrations.RunPython.noop)]
