"""The @workflow decorator, the registry, autodiscovery and the system checks."""

import pytest
from django.core.management import call_command
from django.test import override_settings

from workflows import checks, registry


def test_autodiscovery_finds_app_workflows_and_workflows_modules():
    ids = {wf.id for wf in registry.all_workflows()}
    assert {"t-steps", "t-fanout"} <= ids  # tests/testapp/workflows.py
    assert {"demo-onboarding", "demo-audit"} <= ids  # example/workflows.py
    assert {"c-wait", "c-parent"} <= ids  # WORKFLOWS_MODULES: tests/coord_workflows.py


def test_wildcard_matching():
    wf = registry.get("t-wild")
    assert wf in registry.subscribers("test/wild/a") and wf in registry.subscribers("test/exact")
    assert wf not in registry.subscribers("test/wild")
    assert wf not in registry.subscribers("test/wilder/a")


def test_decorated_workflow_keeps_its_name_and_doc():
    wf = registry.get("t-steps")
    assert wf.__name__ == "steps" and "ledger steps" in wf.__doc__


@override_settings(
    CELERY_BROKER_URL="redis://127.0.0.1:6379/0",
    CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 20},
    WORKFLOWS={"ETA_HORIZON_SECONDS": 30},
)
def test_check_warns_when_eta_horizon_reaches_redis_visibility_timeout():
    ids = [message.id for message in checks.check_settings()]
    assert ids == ["workflows.W001"]


@override_settings(WORKFLOWS={"LEASE_SECONDS": 5, "HEARTBEAT_SECONDS": 5})
def test_check_refuses_heartbeat_not_below_lease():
    assert [m.id for m in checks.check_settings()] == ["workflows.E002"]


@override_settings(WORKFLOWS={"NOT_A_SETTING": 1})
def test_unknown_setting_is_reported():
    [message] = checks.check_settings()
    assert message.id == "workflows.E001" and "NOT_A_SETTING" in message.msg


@override_settings(CELERY_ACCEPT_CONTENT=["json", "pickle"])
def test_check_warns_about_pickle():
    assert [m.id for m in checks.check_settings()] == ["workflows.W003"]


@pytest.mark.django_db
def test_run_dispatcher_once(capsys):
    call_command("run_dispatcher", "--once")
    assert "emitted 0 event(s), rang 0 run(s)" in capsys.readouterr().out
