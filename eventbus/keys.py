"""Event keys: creating them, finding the one a request presents, and what it may send.

A key is 32 random bytes (``secrets.token_urlsafe``, 43 URL-safe characters); only its
SHA-256 is stored. A high-entropy secret needs no slow, salted password hash: nobody can
guess it, so the hash only has to be one-way. Looking a key up by its hash goes through
the unique index; the hash found is then compared with :func:`hmac.compare_digest`.
"""

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from eventbus import conf, validation
from eventbus.exceptions import EventError, EventKeyError
from eventbus.models import EventKey, Workspace

#: ``last_used_at`` is written at most this often per key (not on every request).
TOUCH_EVERY = timedelta(minutes=1)


def hash_key(key: str) -> str:
    """The stored form of ``key``: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def create_event_key(
    workspace: str | None = None, *, name: str = "", prefixes: Iterable[str] = ()
) -> tuple[EventKey, str]:
    """Create an event key for ``workspace`` (a slug; ``None``: the default workspace).

    With ``prefixes``, the key may send only names beginning with one of them. Returns
    the stored row and the key itself, which is shown this once and never stored.
    """
    prefixes = list(prefixes)
    for prefix in prefixes:
        try:
            validation.event_name(prefix)
        except EventError as exc:
            raise EventKeyError(f"prefix {prefix!r} is not a valid name prefix: {exc}") from None
    if not isinstance(name, str) or len(name) > 200:
        raise EventKeyError("name must be a string of at most 200 characters")
    slug = conf.get().DEFAULT_WORKSPACE if workspace is None else workspace
    with transaction.atomic():
        if workspace is None:
            space, _ = Workspace.objects.get_or_create(
                slug=slug, defaults={"name": "Default workspace"}
            )
        else:
            space = Workspace.objects.filter(slug=slug).first()
            if space is None:
                raise EventKeyError(
                    f"unknown workspace {slug!r}: create it first, or leave the workspace "
                    "out for the default one"
                )
        key = secrets.token_urlsafe(32)
        row = EventKey.objects.create(
            workspace=space, name=name, key_hash=hash_key(key), prefixes=prefixes
        )
    return row, key


def find(key: str) -> EventKey | None:
    """The enabled key ``key`` is, with its workspace; ``None`` when unknown or disabled."""
    digest = hash_key(key)
    row = EventKey.objects.select_related("workspace").filter(key_hash=digest).first()
    if row is None or not hmac.compare_digest(row.key_hash, digest) or not row.enabled:
        return None
    return row


def refused_name(key: EventKey, names: Sequence[str]) -> str | None:
    """The first of ``names`` the key's prefixes do not allow, or ``None``."""
    if not key.prefixes:
        return None
    for name in names:
        if not any(name.startswith(prefix) for prefix in key.prefixes):
            return name
    return None


def touch(key: EventKey) -> None:
    """Record that ``key`` was used now, at most once per :data:`TOUCH_EVERY`.

    Skipped without a query when the loaded row is recent enough, so concurrent
    requests with one key do not all write (and lock) its row.
    """
    now = timezone.now()
    if key.last_used_at is not None and key.last_used_at > now - TOUCH_EVERY:
        return
    EventKey.objects.filter(pk=key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - TOUCH_EVERY)
    ).update(last_used_at=now)
    key.last_used_at = now


def set_enabled(queryset: "QuerySet[EventKey]", enabled: bool) -> int:
    """Enable or disable the keys of ``queryset``; return how many changed.

    A disabled key is refused from the next request on (each request looks its key up).
    """
    return queryset.exclude(enabled=enabled).update(enabled=enabled)
