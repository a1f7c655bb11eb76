"""Settings for the processes that ``tests/test_migrations.py`` starts: scratch databases.

``MIGRATION_TEST_DATABASE_URL`` is the database to migrate (``default``) and
``MIGRATION_TEST_FRESH_DATABASE_URL``, if set, a second, empty one (``fresh``).
``MIGRATION_TEST_LEGACY=1`` swaps both apps' migrations for the frozen copies in
``tests/legacy_migrations``: the database then looks like one made before the squash.
"""

import os

import dj_database_url

from tests.settings import *  # noqa: F403

DATABASES = {"default": dj_database_url.parse(os.environ["MIGRATION_TEST_DATABASE_URL"])}
if os.environ.get("MIGRATION_TEST_FRESH_DATABASE_URL"):
    DATABASES["fresh"] = dj_database_url.parse(os.environ["MIGRATION_TEST_FRESH_DATABASE_URL"])

if os.environ.get("MIGRATION_TEST_LEGACY") == "1":
    MIGRATION_MODULES = {
        "eventbus": "tests.legacy_migrations.eventbus",
        "workflows": "tests.legacy_migrations.workflows",
    }
