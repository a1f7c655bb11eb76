"""eventbus migrations 0001–0005 as released (see ``tests.legacy_migrations``)."""
