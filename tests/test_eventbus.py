"""The event bus: validation, idempotency, transactions, workspaces and fan-out to runs."""

import contextlib
import uuid

import pytest
from django.db import transaction

import eventbus
from eventbus.models import Event, EventStatus, Workspace, build
from workflows.models import WorkflowRun
from workflows.testing import no_broker

pytestmark = pytest.mark.django_db


def runs_of(event_id):
    return sorted(
        WorkflowRun.objects.filter(event_id=event_id).values_list("workflow_id", flat=True)
    )


def test_send_stores_the_event_and_one_run_per_subscribed_workflow(
    django_capture_on_commit_callbacks,
):
    with no_broker() as rung, django_capture_on_commit_callbacks(execute=True):
        event_id = eventbus.send("demo/signup.completed", {"userId": "u1", "email": "a@b.c"})
    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.EMITTED and event.workspace.slug == "default"
    # Exact subscribers and the "demo/*" wildcard subscriber.
    assert runs_of(event_id) == ["demo-audit", "demo-lead-score", "demo-onboarding"]
    assert sorted(rung) == sorted(str(r.pk) for r in WorkflowRun.objects.all())


def test_wildcard_and_exact_triggers():
    with no_broker():
        a = eventbus.send("test/wild/deep/name")
        b = eventbus.send("test/exact")
        c = eventbus.send("test/wild")  # the prefix itself is not "under" it
    assert runs_of(a) == ["t-wild"] and runs_of(b) == ["t-wild"] and runs_of(c) == []


def test_idempotency_key_stores_and_triggers_once():
    with no_broker():
        first = eventbus.send("test/exact", {"n": 1}, id="order-1")
        second = eventbus.send("test/exact", {"n": 2}, id="order-1")
    assert first == second
    assert Event.objects.count() == 1 and WorkflowRun.objects.count() == 1


def test_idempotency_key_is_per_workspace():
    Workspace.objects.create(slug="acme")
    with no_broker():
        first = eventbus.send("test/exact", id="k")
        second = eventbus.send("test/exact", id="k", workspace="acme")
    assert first != second
    assert WorkflowRun.objects.get(event_id=second).workspace.slug == "acme"


def test_batch_with_repeated_keys_and_existing_key():
    with no_broker():
        existing = eventbus.send("test/exact", id="a")
        ids = eventbus.send_batch(
            [
                {"name": "test/exact", "id": "a"},
                {"name": "test/exact", "id": "b"},
                {"name": "test/exact", "id": "b"},
                {"name": "test/exact"},
            ]
        )
    assert ids[0] == existing and ids[1] == ids[2] and len(set(ids)) == 3
    assert Event.objects.count() == 3 and WorkflowRun.objects.count() == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("commits", [False, True], ids=["rolled-back", "committed-control"])
def test_event_sent_in_a_rolled_back_transaction_does_not_exist(commits):
    # A transactional database: the block below really commits or rolls back, so its
    # on_commit callbacks (the bells) run or are dropped as in production; no_broker
    # captures the bells they ring. The committed case shows a bell would be seen.
    class Boom(Exception):
        pass

    with no_broker() as rung, contextlib.suppress(Boom), transaction.atomic():
        event_id = eventbus.send("test/exact")
        assert rung == []  # nothing is rung before the commit
        if not commits:
            raise Boom
    if commits:
        runs = WorkflowRun.objects.filter(event_id=event_id).values_list("pk", flat=True)
        assert Event.objects.count() == 1 and rung == [str(pk) for pk in runs] != []
    else:
        assert Event.objects.count() == 0 and WorkflowRun.objects.count() == 0
        assert rung == []


def test_future_ts_is_scheduled_without_runs():
    with no_broker():
        event_id = eventbus.send("test/exact", ts=eventbus_now() + 60_000)
    assert Event.objects.get(pk=event_id).status == EventStatus.SCHEDULED
    assert WorkflowRun.objects.count() == 0


def test_past_ts_is_emitted_at_once():
    with no_broker():
        event_id = eventbus.send("test/exact", ts=eventbus_now() - 3_600_000)
    assert Event.objects.get(pk=event_id).status == EventStatus.EMITTED
    assert runs_of(event_id) == ["t-wild"]


def test_emit_due_emits_each_scheduled_event_once():
    from eventbus import bus

    with no_broker():
        event_id = eventbus.send("test/exact", ts=eventbus_now() + 60_000)
        Event.objects.filter(pk=event_id).update(ts=eventbus_now() - 1)
        assert bus.emit_due() == 1
        assert bus.emit_due() == 0
    assert runs_of(event_id) == ["t-wild"]


def test_repeated_delivery_creates_no_second_run():
    from eventbus import bus

    with no_broker():
        event_id = eventbus.send("test/exact")
        bus._deliver(list(Event.objects.filter(pk=event_id)))
    assert WorkflowRun.objects.filter(event_id=event_id).count() == 1


def eventbus_now():
    from eventbus import bus

    return bus.now_ms()


def test_event_error_is_a_value_error():
    assert issubclass(eventbus.EventError, ValueError)


def test_build_makes_the_row_the_keyword_form_makes():
    """``models.build`` (the rows of every send and step, made by position) gives each
    field what ``Model(**values)`` gives it, keeps a related instance cached, takes the
    defaults, and refuses a name that is no field."""
    workspace = Workspace(pk=7, slug="w")
    values = {"id": uuid.uuid4(), "workspace": workspace, "name": "a/b", "data": {"k": 1}, "ts": 5}
    made, expected = build(Event, **values), Event(**values)
    for field in Event._meta.concrete_fields:
        if callable(field.default):  # now(), a new dict: made apart, equal in kind
            assert type(getattr(made, field.attname)) is type(getattr(expected, field.attname))
        else:
            assert getattr(made, field.attname) == getattr(expected, field.attname), field.name
    assert made.workspace is workspace and made._state.adding
    assert build(Event, workspace_id=7).workspace_id == 7
    with pytest.raises(TypeError, match="has no field 'nmae'"):
        build(Event, nmae="typo")
