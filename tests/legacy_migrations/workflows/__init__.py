"""workflows migrations 0001–0004 as released (see ``tests.legacy_migrations``)."""
