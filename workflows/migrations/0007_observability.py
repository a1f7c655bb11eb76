"""Observability (issue 16): the counters of ``GET /metrics``, kept in the database."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("workflows", "0006_admission")]

    operations = [
        migrations.CreateModel(
            name="MetricTally",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("name", models.CharField(max_length=100)),
                (
                    "labels",
                    models.CharField(
                        blank=True,
                        default="",
                        help_text="The series' labels, as sorted JSON.",
                        max_length=600,
                    ),
                ),
                ("value", models.FloatField(default=0.0)),
            ],
            options={
                "verbose_name": "dashboard",
                "verbose_name_plural": "dashboard",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("name", "labels"), name="workflows_tally_series"
                    )
                ],
            },
        ),
    ]
