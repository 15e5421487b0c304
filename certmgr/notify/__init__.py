"""Notifications to the operators: webhooks and e-mail.

:class:`Notification` is what is said, a channel (:class:`WebhookNotifier`, :class:`SmtpNotifier`) how, and
:class:`Notifier` says it on every configured channel and reports each outcome as a :class:`ChannelResult`.
:func:`expiry_notifications` (pure) decides which certificates deserve an expiry warning.
"""

from certmgr.notify.model import (
    EXPIRY_DATA_LIMIT,
    EXPIRY_TEXT_LIMIT,
    NOTIFICATION_KINDS,
    Channel,
    ChannelResult,
    ExpiryFacts,
    Notification,
    NotificationKind,
    expiring_certificates,
    expiry_notifications,
    redact_url,
)
from certmgr.notify.notifier import Notifier, send_test
from certmgr.notify.smtp import SmtpNotifier
from certmgr.notify.webhook import WebhookNotifier, default_client

__all__ = [
    "EXPIRY_DATA_LIMIT",
    "EXPIRY_TEXT_LIMIT",
    "NOTIFICATION_KINDS",
    "Channel",
    "ChannelResult",
    "ExpiryFacts",
    "Notification",
    "NotificationKind",
    "Notifier",
    "SmtpNotifier",
    "WebhookNotifier",
    "default_client",
    "expiring_certificates",
    "expiry_notifications",
    "redact_url",
    "send_test",
]
