"""CI: install the package as a new user would and run one event through a real worker.

Builds the wheel, installs it with the extras the README documents into a fresh
virtualenv, creates a host project with ``django-admin startproject`` and applies the
README's Quick start to it *literally* (its ``yourproject/settings.py``,
``yourproject/celery.py`` and ``yourproject/__init__.py`` blocks are copied out of
README.md), starts ``celery -A yourproject worker`` and sends one event from
``manage.py shell``, as a web process would. The run must complete, and sending must
log no error (a Celery app that is not loaded rings ``amqp://guest@localhost//``).

Runs on the embedded defaults: SQLite and the filesystem broker (the README's Redis URL
is replaced by ``filesystem://`` after the Quick start is applied), so it needs no
server. Usage: ``python scripts/install_smoke.py`` (``--keep`` keeps the directory).
"""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The extras of the README's ``pip install`` line.
EXTRAS = re.search(
    r'pip install "django-durable-workflows\[([a-z,]+)\]', (ROOT / "README.md").read_text()
)

SMOKE_WORKFLOWS = '''
from datetime import timedelta

from workflows import workflow


@workflow(id="smoke-hello", trigger="smoke/hello", retries=1)
def hello(ctx):
    """A step, a short sleep (woken by the worker's dispatcher or an eta), an event."""
    greeting = ctx.step.run("greet", lambda: f"hello {ctx.event.data['name']}")
    ctx.step.sleep("pause", timedelta(seconds=1))
    ctx.step.send_event("announce", name="smoke/greeted", data={"greeting": greeting})
    return {"greeting": greeting}


@workflow(id="smoke-greeted", trigger="smoke/greeted")
def greeted(ctx):
    """Triggered by the event the first workflow sent."""
    return ctx.step.run("record", lambda: ctx.event.data)
'''


def step(title: str) -> None:
    print(f"-- {title} ({time.monotonic() - STARTED:.0f}s)", flush=True)


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, command))}\n{done.stdout}\n{done.stderr}")
    return done


def quick_start_blocks() -> dict[str, str]:
    """The README's Quick start code blocks, by the file their first line names."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = {}
    for body in re.findall(r"```python\n(.*?)```", section, flags=re.S):
        first = body.splitlines()[0]
        if first.startswith("# yourproject/"):
            blocks[first[2:].strip()] = body
    missing = {"yourproject/settings.py", "yourproject/celery.py", "yourproject/__init__.py"}
    missing -= blocks.keys()
    if missing:
        sys.exit(f"README.md's Quick start has no block for {', '.join(sorted(missing))}")
    return blocks


def build_wheel(work: Path) -> Path:
    # From a copy of what the package is built from: nothing lands in the repository.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("eventbus", "workflows"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", work / "dist", source)
    (wheel,) = (work / "dist").glob("*.whl")
    return wheel


def host_project(venv: Path, work: Path) -> Path:
    host = work / "host"
    host.mkdir()
    run(venv / "bin" / "django-admin", "startproject", "yourproject", host)
    for name, body in quick_start_blocks().items():
        path = host / name
        if name.endswith("settings.py"):
            path.write_text(path.read_text() + "\n" + body)  # `INSTALLED_APPS += …`
        else:
            path.write_text(body)
    broker = work / "broker"
    folders = {key: broker / key for key in ("queue", "control")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    settings = host / "yourproject" / "settings.py"
    settings.write_text(
        settings.read_text()
        + "\n# install_smoke: the embedded broker instead of the README's Redis.\n"
        + 'CELERY_BROKER_URL = "filesystem://"\n'
        + "CELERY_BROKER_TRANSPORT_OPTIONS = "
        + repr(
            {
                "data_folder_in": str(folders["queue"]),
                "data_folder_out": str(folders["queue"]),
                "control_folder": str(folders["control"]),
                "polling_interval": 0.1,
            }
        )
        + '\nINSTALLED_APPS += ["smokeapp"]\n'
    )
    app = host / "smokeapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "workflows.py").write_text(SMOKE_WORKFLOWS)
    return host


def runs(host: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(host / "db.sqlite3") as db:
        return db.execute(
            "SELECT workflow_id, status FROM workflows_workflowrun ORDER BY workflow_id"
        ).fetchall()


def main() -> None:
    if EXTRAS is None:
        sys.exit('README.md has no `pip install "django-durable-workflows[…]"` line')
    work = Path(tempfile.mkdtemp(prefix="install-smoke-"))
    # Nothing of this repository or of the CI's configuration reaches the new project.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "VIRTUAL_ENV"}
        and not key.startswith(("CELERY_", "WORKFLOWS_", "EMBEDDED_"))
    }
    worker = None
    log = work / "worker.log"
    try:
        step("build the wheel")
        wheel = build_wheel(work)
        step(f"install {wheel.name}[{EXTRAS[1]}] into a fresh virtualenv")
        venv = work / "venv"
        run(sys.executable, "-m", "venv", venv)
        python = venv / "bin" / "python"
        run(python, "-m", "pip", "install", "--quiet", f"{wheel}[{EXTRAS[1]}]", env=env)
        # kombu's Redis transport imports what only celery[redis] brings (`packaging`).
        run(python, "-c", "import kombu.transport.redis, psycopg", env=env)

        step("a host project, following the README's Quick start")
        host = host_project(venv, work)
        run(python, "manage.py", "migrate", "--verbosity", "0", cwd=host, env=env)
        run(python, "manage.py", "check", "--fail-level", "WARNING", cwd=host, env=env)

        step("start a worker: celery -A yourproject worker")
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [venv / "bin" / "celery", "-A", "yourproject", "worker", "--loglevel", "INFO",
                 "--concurrency", "2", "--without-mingle", "--without-gossip"],
                cwd=host, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the worker did not start:\n{log.read_text()}")
            time.sleep(0.2)

        step("send an event from manage.py shell, as a web process would")
        sent = run(
            python, "manage.py", "shell", "-c",
            "import eventbus; print(eventbus.send('smoke/hello', {'name': 'new user'}))",
            cwd=host, env=env,
        )  # fmt: skip
        if "Traceback" in sent.stderr or "amqp" in sent.stderr:
            sys.exit(f"sending logged an error (is the Celery app loaded?):\n{sent.stderr}")
        expected = [("smoke-greeted", "completed"), ("smoke-hello", "completed")]
        deadline = time.monotonic() + 60
        while runs(host) != expected:
            if time.monotonic() > deadline:
                sys.exit(f"runs {runs(host)}, expected {expected}; worker log:\n{log.read_text()}")
            time.sleep(0.3)
        step(f"both runs completed: {runs(host)}")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        if "--keep" in sys.argv:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


STARTED = time.monotonic()
if __name__ == "__main__":
    main()
