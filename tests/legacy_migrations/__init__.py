"""The migrations of both apps as they were before the squash (eventbus 0001–0005,
workflows 0001–0004), frozen: ``tests/test_migrations.py`` builds a database with them
and checks that the current migrations carry it forward.

Never edit these files: they stand for databases that already exist.
"""
