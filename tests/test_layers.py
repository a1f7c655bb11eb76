"""The event bus stands alone: nothing in it names the workflow engine.

import-linter (``lint-imports`` in CI) checks the imports; this checks what imports do
not show: migration dependencies, model references by string and templates.
"""

from pathlib import Path

import pytest
from django.db.migrations.loader import MigrationLoader

EVENTBUS = Path(__file__).resolve().parent.parent / "eventbus"


def test_no_line_of_eventbus_outside_comments_names_workflows():
    offending = []
    for path in sorted(EVENTBUS.rglob("*")):
        if path.suffix not in {".py", ".html", ".txt"} or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0] if path.suffix == ".py" else line
            if "workflows" in code:
                offending.append(f"{path.relative_to(EVENTBUS.parent)}:{number}: {line.strip()}")
    assert not offending, "\n".join(offending)


@pytest.mark.django_db
def test_eventbus_migrations_depend_on_nothing_of_workflows():
    loader = MigrationLoader(None, ignore_no_migrations=True)
    for (app, name), migration in loader.disk_migrations.items():
        if app == "eventbus":
            assert all(dep[0] == "eventbus" for dep in migration.dependencies), name
