"""Webhooks ``POST /w/<id>``: real signatures computed here, transforms, de-duplication."""

import hashlib
import hmac
import json
import time

import pytest

from eventbus.models import Event, Webhook, WebhookScheme, Workspace

pytestmark = pytest.mark.django_db

SECRET = "It's a Secret to Everybody"


def two_events(request):
    """A transform: one delivery, two events (the body is there as ``request.body``)."""
    body = json.loads(request.body)
    return [
        {"name": "github/issue.opened", "data": {"n": body["n"]}},
        {"name": "github/issue.seen", "data": {"by": request.webhook.name}},
    ]


def explodes(request):
    """A transform that raises (a case of tests/test_catalogue.py posts through it)."""
    raise KeyError("no 'action' in the payload")


def forges(request):
    """A transform that returns a reserved name (a case of tests/test_catalogue.py)."""
    return [{"name": "workflows/run.failed", "data": {}}]


def hook(scheme=WebhookScheme.HMAC_SHA256, **fields):
    fields.setdefault("workspace", Workspace.objects.get_or_create(slug="repo")[0])
    fields.setdefault("event_name", "github/push")
    return Webhook.objects.create(scheme=scheme, secret=SECRET, name="gh", **fields)


def github(client, webhook, body, *, delivery="72d3162e-cc78", secret=SECRET, signature=None):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    digest = hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    headers = {"X-GitHub-Event": "push", "X-Hub-Signature-256": signature or f"sha256={digest}"}
    if delivery:
        headers["X-GitHub-Delivery"] = delivery
    return client.post(f"/w/{webhook.pk}", raw, content_type="application/json", headers=headers)


def stripe(client, webhook, body, *, at=None, secret=SECRET, extra_v1=()):
    raw = json.dumps(body).encode()
    t = str(int(at if at is not None else time.time()))
    v1 = hmac.new(secret.encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest()
    header = ",".join([f"t={t}", *(f"v1={s}" for s in extra_v1), f"v1={v1}", "v0=ignored"])
    return client.post(
        f"/w/{webhook.pk}", raw, content_type="application/json",
        headers={"Stripe-Signature": header},
    )  # fmt: skip


def test_a_github_delivery_is_one_event_keyed_by_its_delivery_id_once(client):
    webhook = hook()
    body = {"ref": "refs/heads/main", "commits": [{"id": "abc"}]}
    first = github(client, webhook, body)
    assert first.status_code == 200, first.content
    (event_id,) = first.json()["ids"]
    event = Event.objects.get(pk=event_id)
    assert (event.name, event.data, event.workspace.slug) == ("github/push", body, "repo")
    assert event.idempotency_key == "72d3162e-cc78"  # verbatim
    again = github(client, webhook, body)  # GitHub's redelivery
    assert again.json() == {"ids": [event_id], "status": 200} and Event.objects.count() == 1


def test_the_signature_is_checked_before_the_body_is_parsed(client):
    reply = github(client, hook(), b"{not json", secret="guess")
    assert reply.status_code == 401  # not a 400 about JSON: the bytes were never parsed
    assert github(client, hook(), b"{not json").status_code == 400


def test_stripe_signatures_with_tolerance_rotation_and_the_event_id_as_key(client):
    webhook = hook(WebhookScheme.STRIPE, event_name="stripe/event")
    body = {"id": "evt_1", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}}
    ok = stripe(client, webhook, body, extra_v1=["0" * 64])  # two v1 while rolling a secret
    assert ok.status_code == 200, ok.content
    event = Event.objects.get(pk=ok.json()["ids"][0])
    assert (event.idempotency_key, event.data["type"]) == ("evt_1", "invoice.paid")
    assert stripe(client, webhook, body).json()["ids"] == ok.json()["ids"]
    old = stripe(client, webhook, {**body, "id": "evt_2"}, at=time.time() - 301)
    assert old.status_code == 401 and "older than 300" in old.json()["error"]
    wrong = stripe(client, webhook, {**body, "id": "evt_3"}, secret="whsec_other")
    assert wrong.status_code == 401
    assert Event.objects.count() == 1


def test_a_transform_by_dotted_path_makes_several_events_keyed_by_the_delivery(client):
    webhook = hook(transform="tests.test_webhooks.two_events")
    reply = github(client, webhook, {"n": 7}, delivery="d-1")
    assert reply.status_code == 200, reply.content
    events = [Event.objects.get(pk=i) for i in reply.json()["ids"]]
    assert [(e.name, e.data, e.idempotency_key) for e in events] == [
        ("github/issue.opened", {"n": 7}, "d-1:0"),
        ("github/issue.seen", {"by": "gh"}, "d-1:1"),
    ]
    assert github(client, webhook, {"n": 7}, delivery="d-1").json() == reply.json()


def test_unknown_or_disabled_webhooks_get_404_and_other_methods_405(client):
    webhook = hook(enabled=False)
    assert github(client, webhook, {"a": 1}).status_code == 404
    Webhook.objects.update(enabled=True)
    get = client.get(f"/w/{webhook.pk}")
    assert get.status_code == 405 and get["Allow"] == "POST" and get.json()["status"] == 405
    webhook.delete()
    assert github(client, webhook, {"a": 1}).json()["status"] == 404


def test_the_admin_keeps_the_secret_write_only_and_checks_the_transform(admin_client):
    workspace = Workspace.objects.create(slug="repo")
    form = {
        "name": "gh", "workspace": workspace.pk, "event_name": "github/push",
        "scheme": "hmac-sha256", "secret": "", "transform": "tests.nowhere.fn", "enabled": "on",
    }  # fmt: skip
    refused = admin_client.post("/admin/eventbus/webhook/add/", form)
    assert b"cannot be imported" in refused.content and b"secret is required" in refused.content
    form.update(secret=SECRET, transform="")
    assert admin_client.post("/admin/eventbus/webhook/add/", form).status_code == 302
    webhook = Webhook.objects.get()
    page = admin_client.get(f"/admin/eventbus/webhook/{webhook.pk}/change/").content
    assert SECRET.encode() not in page and f"/w/{webhook.pk}".encode() in page
    form.update(secret="", name="renamed")  # blank keeps the secret
    admin_client.post(f"/admin/eventbus/webhook/{webhook.pk}/change/", form)
    assert Webhook.objects.get().secret == SECRET and Webhook.objects.get().name == "renamed"
