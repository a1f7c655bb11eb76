"""The unmodified ``inngest`` Python client against the event API on a live HTTP server."""

import inngest
import pytest
from inngest._internal.errors import SendEventsError  # not re-exported by the package

import eventbus
from eventbus import replies
from eventbus.models import Event, EventKey
from tests.conftest import wait_until
from workflows.models import RunStatus, WorkflowRun


def client(live_server, key: str) -> inngest.Inngest:
    """The client as its users make it (``is_production``: it sends the key it is given)."""
    return inngest.Inngest(
        app_id="tests", event_api_base_url=live_server.url, event_key=key, is_production=True
    )


@pytest.mark.worker
def test_the_inngest_client_sends_one_event_and_a_batch_that_a_worker_runs(live_server, worker):
    _, key = eventbus.create_event_key(name="live")
    sender = client(live_server, key)
    (one,) = sender.send_sync(inngest.Event(name="test/steps", data={"steps": 1}))
    batch = sender.send_sync(
        [inngest.Event(name="test/steps", data={"steps": 2}), inngest.Event(name="test/x")]
    )
    assert len(batch) == 2 and len({one, *batch}) == 3
    events = {str(e.pk): e for e in Event.objects.filter(pk__in=[one, *batch])}
    assert events[one].data == {"steps": 1} and events[batch[1]].name == "test/x"
    assert {e.workspace.slug for e in events.values()} == {"default"}

    def completed():
        runs = WorkflowRun.objects.filter(event_id__in=[one, batch[0]])
        return runs.count() == 2 and all(r.status == RunStatus.COMPLETED for r in runs)

    wait_until(completed, timeout=90, what="the runs of the sent events")


def test_the_inngest_client_raises_for_a_wrong_or_disabled_key(live_server):
    _, key = eventbus.create_event_key()
    for bad in ("wrong-key", key):
        if bad == key:
            EventKey.objects.update(enabled=False)
        with pytest.raises(SendEventsError, match="Event key not found"):
            client(live_server, bad).send_sync(inngest.Event(name="shop/x"))
    assert not Event.objects.exists()


def test_a_client_retry_after_a_lost_reply_stores_nothing_twice(live_server, monkeypatch):
    _, key = eventbus.create_event_key()
    original, calls = replies.accepted, []

    def lose_the_first_reply(ids):
        calls.append(list(ids))
        if len(calls) == 1:
            raise ConnectionResetError("reply lost")  # stored and committed, reply gone
        return original(ids)

    monkeypatch.setattr(replies, "accepted", lose_the_first_reply)
    ids = client(live_server, key).send_sync(
        [inngest.Event(name="shop/a", data={"n": 1}), inngest.Event(name="shop/b")]
    )
    assert len(calls) == 2 and calls[0] == calls[1] == ids  # retried with the same seed
    assert Event.objects.count() == 2


def test_the_client_refuses_a_base_url_without_a_dot_or_a_port():
    # What docs/event-api.md warns about: "http://web" fails, "http://web:8000" works.
    with pytest.raises(Exception, match="(?i)url"):
        inngest.Inngest(app_id="t", event_api_base_url="http://web", is_production=True)
    inngest.Inngest(app_id="t", event_api_base_url="http://web:8000", is_production=True)
