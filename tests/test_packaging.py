"""What a new user installs and copies: the extras, the README's Quick start, beat's files.

The whole path (build the wheel, install it with the documented extras in a fresh
virtualenv, follow the Quick start, run one event through a worker) is
``scripts/install_smoke.py``, run by CI (``.ci/run``); these are its quick checks.
"""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import ROOT, wait_until

README = (ROOT / "README.md").read_text()
QUICK_START = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]


def test_the_redis_extra_installs_celerys_own_redis_extra():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    redis = project["optional-dependencies"]["redis"]
    # Celery's extra brings kombu's Redis transport with the redis-py versions (and the
    # `packaging` module) it needs; a redis-py pin of our own would fight it.
    assert [re.split(r"[<>=!~ ]", req)[0] for req in redis] == ["celery[redis]"]
    (celery,) = [req for req in project["dependencies"] if req.startswith("celery")]
    assert redis[0].removeprefix("celery[redis]") == celery.removeprefix("celery")


def test_the_quick_start_sets_the_settings_module_loads_the_app_and_names_the_broker():
    assert 'os.environ.setdefault("DJANGO_SETTINGS_MODULE", "yourproject.settings")' in QUICK_START
    assert "# yourproject/__init__.py\nfrom .celery import app as celery_app" in QUICK_START
    assert re.search(r"^CELERY_BROKER_URL = ", QUICK_START, flags=re.M)
    # The CI smoke test copies these blocks out of the README by their first line.
    for name in ("settings.py", "celery.py", "__init__.py"):
        assert f"```python\n# yourproject/{name}\n" in QUICK_START
    assert "scripts/install_smoke.py" in (ROOT / ".ci" / "run").read_text()


def test_beat_keeps_its_schedule_under_var_not_where_it_was_started(tmp_path):
    var = Path(settings.VAR_DIR)
    for old in var.glob("celerybeat-schedule*"):
        old.unlink()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONPATH": str(ROOT)}
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "settings", "beat", "--loglevel", "INFO"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: list(var.glob("celerybeat-schedule*")), timeout=60, what="beat")
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert not list(tmp_path.iterdir())
    # And in a host project that keeps the file where beat starts, git ignores it.
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "celerybeat-schedule.db"], cwd=ROOT, check=False
    )
    if ignored.returncode == 128:
        pytest.skip("not a git checkout")
    assert ignored.returncode == 0
