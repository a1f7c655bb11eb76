"""Drop the foreign keys left on ``eventbus_event.source_run_id`` and ``source_step_id``.

Databases made by the squashed migrations' predecessors (eventbus ``0002_initial``) have
them; the squashed migration, and so a new database, has plain id columns with the same
names and indexes. Nothing to do on a new database; the indexes stay either way.
"""

from django.db import migrations

SOURCE_COLUMNS = (["source_run_id"], ["source_step_id"])


def drop_source_foreign_keys(apps, schema_editor):
    """Drop the two columns' foreign-key constraints, found by introspection, if any."""
    Event = apps.get_model("eventbus", "Event")
    table = Event._meta.db_table
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, table)
    names = sorted(
        name
        for name, info in constraints.items()
        if info["foreign_key"] and list(info["columns"]) in SOURCE_COLUMNS
    )
    if not names:
        return
    if connection.vendor == "sqlite":
        # SQLite cannot drop a constraint: rebuild the table from the model state, which
        # has no foreign key on these columns (data, indexes and constraints are kept).
        schema_editor._remake_table(Event)
        return
    quote = schema_editor.quote_name
    for name in names:
        # sql_delete_fk is each backend's own statement (DROP CONSTRAINT on PostgreSQL).
        schema_editor.execute(
            schema_editor.sql_delete_fk % {"table": quote(table), "name": quote(name)}
        )


class Migration(migrations.Migration):
    dependencies = [("eventbus", "0001_squashed_0005_coordination")]

    operations = [
        # The columns keep their values; going back needs no foreign keys either (the
        # squashed state has none), so the reverse is a no-op.
        migrations.RunPython(drop_source_foreign_keys, migrations.RunPython.noop),
    ]
