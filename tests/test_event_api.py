"""The HTTP event API with Django's test client: keys, replies, limits, all or nothing.

The unmodified ``inngest`` client against a live server is in ``test_event_api_live.py``;
webhooks are in ``test_webhooks.py``.
"""

import hashlib
import json

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import call_command
from django.db import connection
from django.test import Client, override_settings

import eventbus
from eventbus import bus
from eventbus.models import Event, EventKey, Workspace
from workflows import registry, workflow
from workflows.models import RunStatus, WorkflowRun
from workflows.testing import drain, no_broker

pytestmark = pytest.mark.django_db


@pytest.fixture
def key():
    """A key of workspace "shop"."""
    Workspace.objects.create(slug="shop")
    return eventbus.create_event_key("shop", name="storefront")[1]


def post(client, key, body, **headers):
    raw = body if isinstance(body, bytes | str) else json.dumps(body)
    return client.post(f"/e/{key}", raw, content_type="application/json", headers=headers)


def test_one_event_or_an_array_is_stored_in_the_keys_workspace_with_ids_in_order(client, key):
    Workspace.objects.create(slug="other")
    one = post(client, key, {"name": "shop/order.created", "data": {"n": 1}})
    assert one.status_code == 200, one.content
    (first,) = one.json()["ids"]
    assert one.json() == {"ids": [first], "status": 200}
    # Whatever the query string or the headers say, the key's workspace is used.
    many = client.post(
        f"/e/{key}?workspace=other",
        json.dumps([{"name": f"shop/item.{i}", "data": {"i": i}} for i in range(3)]),
        content_type="text/plain",  # JSON only, whatever the content type says
        headers={"X-Workspace": "other", "X-Inngest-Env": "other"},
    )
    ids = many.json()["ids"]
    assert many.status_code == 200 and len(ids) == 3
    events = {str(e.pk): e for e in Event.objects.filter(pk__in=[first, *ids])}
    assert [events[i].name for i in ids] == ["shop/item.0", "shop/item.1", "shop/item.2"]
    assert {e.workspace.slug for e in events.values()} == {"shop"}
    assert events[first].data == {"n": 1}
    assert not Event.objects.filter(workspace__slug="other").exists()
    assert EventKey.objects.get().last_used_at is not None


def test_an_event_triggers_the_workflows_of_the_keys_workspace(client, key):
    with no_broker():
        reply = post(client, key, {"name": "test/steps", "data": {"steps": 1}})
    drain()
    run = WorkflowRun.objects.get(event_id=reply.json()["ids"][0])
    assert (run.workspace.slug, run.status) == ("shop", RunStatus.COMPLETED)


def test_unknown_and_disabled_keys_get_401_and_store_nothing(client, key):
    unknown = post(client, "not-a-key", {"name": "shop/x"})
    assert unknown.status_code == 401
    assert unknown.json() == {"status": 401, "error": "Event key not found"}
    EventKey.objects.update(enabled=False)
    disabled = post(client, key, {"name": "shop/x"})
    assert (disabled.status_code, disabled.json()) == (401, unknown.json())
    assert not Event.objects.exists()


def test_only_a_hash_of_the_key_is_stored_and_the_command_prints_the_key_last(capsys):
    Workspace.objects.create(slug="shop")
    call_command("create_event_key", "--workspace", "shop", "--name", "ci", "--prefix", "shop/")
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    row = EventKey.objects.get()
    assert row.key_hash == hashlib.sha256(printed.encode()).hexdigest()
    assert (row.name, row.prefixes, row.workspace.slug) == ("ci", ["shop/"], "shop")
    assert len(printed) >= 43  # 32 random bytes
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM eventbus_eventkey")
        assert printed not in repr(cursor.fetchall())


def test_a_key_with_prefixes_sends_only_names_under_them(client):
    Workspace.objects.create(slug="shop")
    _, key = eventbus.create_event_key("shop", prefixes=["shop/", "billing/"])
    assert post(client, key, [{"name": "shop/a"}, {"name": "billing/b"}]).status_code == 200
    refused = post(client, key, [{"name": "shop/c"}, {"name": "admin/d"}])
    assert refused.status_code == 403
    assert "'admin/d'" in refused.json()["error"] and refused.json()["status"] == 403
    assert sorted(Event.objects.values_list("name", flat=True)) == ["billing/b", "shop/a"]


def test_too_many_events_get_400_and_the_count_limit_is_a_setting(client, key):
    with override_settings(EVENTBUS={"MAX_REQUEST_EVENTS": 3}):
        reply = post(client, key, [{"name": "shop/x"}] * 4)
        assert post(client, key, [{"name": "shop/x"}] * 3).status_code == 200
    assert reply.status_code == 400 and "at most 3 events" in reply.json()["error"]
    assert Event.objects.count() == 3


def test_a_body_over_max_request_bytes_gets_413_not_djangos_form_limit(client, key):
    body = [{"name": "shop/x", "data": {"pad": "a" * 2000}}] * 3
    with override_settings(EVENTBUS={"MAX_REQUEST_BYTES": 5000}, DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        refused = post(client, key, body)
        accepted = post(client, key, body[:2])  # over Django's 1,000, under ours
    assert refused.status_code == 413 and refused.json()["status"] == 413
    assert "MAX_REQUEST_BYTES" in refused.json()["error"]
    assert accepted.status_code == 200 and Event.objects.count() == 2


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_other_methods_get_405_with_allow_post(client, key, method):
    reply = getattr(client, method)(f"/e/{key}")
    assert reply.status_code == 405 and reply["Allow"] == "POST"
    assert reply.json()["status"] == 405 and "POST" in reply.json()["error"]


class ReadsTheBody:
    """A middleware that reads ``request.body``, as some do (so Django's limit applies)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.body  # noqa: B018
        return self.get_response(request)


def test_replies_are_json_even_when_django_refuses_before_the_view(client, key):
    host = client.post(f"/e/{key}", "{}", content_type="application/json", HTTP_HOST="evil.test")
    assert host.status_code == 400 and "ALLOWED_HOSTS" in host.json()["error"]
    for path in (f"/e/{key}/", "/e/", "/w/not-a-uuid", f"/e/{key}/extra"):
        missing = client.post(path, "{}", content_type="application/json")
        assert missing.status_code == 404 and missing.json()["status"] == 404, path
    with override_settings(
        MIDDLEWARE=["eventbus.middleware.EventApiMiddleware", f"{__name__}.ReadsTheBody"],
        DATA_UPLOAD_MAX_MEMORY_SIZE=100,
    ):
        big = post(Client(), key, {"name": "shop/x", "data": {"pad": "a" * 200}})
    assert big.status_code == 413 and "DATA_UPLOAD_MAX_MEMORY_SIZE" in big.json()["error"]
    # Other paths keep Django's own replies.
    assert "json" not in client.get("/admin/nothing-here/")["Content-Type"]
    assert not Event.objects.exists()


def test_a_crash_in_the_view_replies_json_500_and_stores_nothing(key, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(bus, "_deliver", fail)  # after the insert: the rollback is seen
    reply = post(Client(raise_request_exception=False), key, [{"name": "test/steps"}] * 2)
    assert reply.status_code == 500 and reply.json() == {
        "ids": [],
        "status": 500,
        "error": "internal server error",
    }
    assert not Event.objects.exists()


def test_a_repeated_seed_stores_nothing_twice_and_returns_the_same_ids(client, key):
    seed = {"x-inngest-event-id-seed": "1733100000000,q2b6Ojm0kDqF9g=="}
    body = [{"name": "shop/a"}, {"name": "shop/b", "id": "own-key"}, {"name": "shop/a"}]
    first = post(client, key, body, **seed).json()["ids"]
    again = post(client, key, body, **seed).json()["ids"]
    assert first == again and len(set(first)) == 3 and Event.objects.count() == 3
    assert Event.objects.get(pk=first[1]).idempotency_key == "own-key"
    other = post(client, key, body, **{"x-inngest-event-id-seed": "1733100000001,AAAA"})
    assert other.json()["ids"][1] == first[1]  # its own id de-duplicates it
    assert Event.objects.count() == 5
    bad = post(client, key, body, **{"x-inngest-event-id-seed": "yesterday"})
    assert bad.status_code == 400 and "seed" in bad.json()["error"]


def test_seeds_never_reach_another_workspace(client, key):
    Workspace.objects.create(slug="other")
    _, other_key = eventbus.create_event_key("other")
    seed = {"x-inngest-event-id-seed": "1733100000000,q2b6Ojm0kDqF9g=="}
    mine = post(client, key, {"name": "shop/a"}, **seed).json()["ids"]
    theirs = post(client, other_key, {"name": "shop/a"}, **seed).json()["ids"]
    assert mine != theirs
    assert Event.objects.get(pk=theirs[0]).workspace.slug == "other"


@pytest.mark.django_db(transaction=True)
def test_a_request_of_100_events_is_one_transaction(key):
    outermost = []

    def record(execute, sql, params, many, context):
        # (The process's metric counts are written after the request, apart from it.)
        writes = sql.lstrip().upper().startswith(("INSERT", "UPDATE"))
        if writes and "metrictally" not in sql:
            blocks = connection.atomic_blocks
            outermost.append(id(blocks[0]) if blocks else None)
        return execute(sql, params, many, context)

    body = [{"name": f"shop/n.{i}", "data": {"i": i}} for i in range(100)]
    with connection.execute_wrapper(record), no_broker():
        reply = post(Client(), key, body, **{"x-inngest-event-id-seed": "1,AAAA"})
    assert reply.status_code == 200 and Event.objects.count() == 100
    # Every write (the events, the key's last use) in one outermost atomic block.
    assert outermost and None not in outermost and len(set(outermost)) == 1


# --- names under workflows/ are the engine's -------------------------------------------


def test_step_send_event_refuses_reserved_names_and_the_engine_still_emits_its_own():
    @workflow(id="t-forger", trigger="test/forger", retries=0)
    def forger(ctx):
        ctx.step.send_event("forge", name="workflows/run.failed", data={"run_id": "x"})

    try:
        with no_broker():
            eventbus.send("test/forger")
            drain()
    finally:
        registry.unregister("t-forger")
    run = WorkflowRun.objects.get(workflow_id="t-forger")
    assert run.status == RunStatus.FAILED and "reserved" in run.error["message"]
    # The engine's own event about that failure exists; the forged one does not.
    failed = Event.objects.filter(name="workflows/run.failed")
    assert [e.data["run_id"] for e in failed] == [str(run.pk)]


# --- the admin --------------------------------------------------------------------------


def staff(*codenames):
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


def test_admin_disables_enables_and_deletes_keys_with_permissions(client, key):
    row = EventKey.objects.get()
    page = "/admin/eventbus/eventkey/"
    disable = {"action": "disable_keys", "_selected_action": [row.pk]}
    # Not staff: the admin login.
    assert client.post(page, disable).status_code == 302
    viewer = staff("view_eventkey")
    assert viewer.get(page).status_code == 200
    assert b"disable_keys" not in viewer.get(page).content
    viewer.post(page, disable)
    assert EventKey.objects.get().enabled
    User.objects.filter(username="ops").delete()
    manager = staff("view_eventkey", "change_eventkey")
    assert manager.post(page, disable).status_code == 302
    assert not EventKey.objects.get().enabled
    assert post(client, key, {"name": "shop/x"}).status_code == 401  # from the next request
    manager.post(page, {"action": "enable_keys", "_selected_action": [row.pk]})
    assert post(client, key, {"name": "shop/x"}).status_code == 200
    assert manager.get(f"{page}{row.pk}/delete/").status_code == 403
    User.objects.filter(username="ops").delete()
    deleter = staff("view_eventkey", "delete_eventkey")
    deleter.post(f"{page}{row.pk}/delete/", {"post": "yes"})
    assert not EventKey.objects.exists()
    assert post(client, key, {"name": "shop/x"}).status_code == 401


def test_the_event_api_wiring_is_checked(settings):
    from eventbus import checks

    assert checks.check_event_api() == []
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if m != checks.MIDDLEWARE]
    assert [w.id for w in checks.check_event_api()] == ["eventbus.W002"]
    settings.MIDDLEWARE = ["django.middleware.common.CommonMiddleware", checks.MIDDLEWARE]
    assert [w.id for w in checks.check_event_api()] == ["eventbus.W003"]
    settings.ROOT_URLCONF = "tests.event_api_urls"
    assert "eventbus.W001" in [w.id for w in checks.check_event_api()]
