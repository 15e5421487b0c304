"""What certmgr asks of one interaction: the :class:`Job` (a write or a verify) and the admission decision that
the adapter hands to :func:`certmgr.wpi.interaction.start`. Pure.

D10 (no private key without a certmgr-started interaction) is decided in exactly one place,
:func:`certmgr.deploy.admission.decide`, which produces one of the :data:`Admission` values below. The state
machine carries the decision out and decides nothing about authorisation itself:

* :class:`Serve` — run this job (a write job only ever comes from an admission that passed D10);
* :class:`Defer` — a write is pending but the phone called on its own: ``CleanUp``, contact-me later;
* :class:`Refuse` — a job is pending but D10 refused this call: ``CleanUp`` and an audit record
  (:class:`~certmgr.wpi.effects.SecurityRefused`);
* :class:`NoJob` — nothing pending for the phone: ``CleanUp``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import assert_never

from certmgr.errors import InputError, ProtocolError
from certmgr.identity import normalize_mac
from certmgr.wpi.certinfo import ExpectedCert
from certmgr.wpi.messages import ITEM_WBM_CERTIFICATE, ITEM_WBM_CERTIFICATE_INFO, Item


class JobMode(StrEnum):
    """``write``: deploy, then read back. ``verify``: the phone already accepted the write (e.g. before
    certmgr restarted): only ReadItems, never write again."""

    WRITE = "write"
    VERIFY = "verify"


@dataclass(frozen=True)
class Job:
    """A pending deployment for one phone, as the interaction needs it.

    ``write_items`` (``repr`` hidden: it holds the PKCS#12) are sent in this order; see :meth:`certificate`.

    Raises:
        ProtocolError: (on construction) for an invalid MAC, a write job without items, a verify job with
            items, or an empty ``info_item``.
    """

    deployment_id: int
    mac: str
    mode: JobMode
    write_items: tuple[Item, ...] = field(default=(), repr=False)
    info_item: str = ITEM_WBM_CERTIFICATE_INFO
    #: For a write whose earlier attempt's outcome is unknown: read the info first and write only if it does not
    #: identify this certificate.
    check_first: ExpectedCert | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mac", normalize_mac(self.mac))
        except InputError as exc:
            raise ProtocolError("job has an invalid MAC address") from exc
        object.__setattr__(self, "mode", JobMode(self.mode))
        object.__setattr__(self, "write_items", tuple(self.write_items))
        if self.mode is JobMode.WRITE and not self.write_items:
            raise ProtocolError("a write job needs items to write")
        if self.mode is JobMode.VERIFY and (self.write_items or self.check_first is not None):
            raise ProtocolError("a verify job must not carry items to write")
        if not self.info_item.strip():
            raise ProtocolError("info item name must not be empty")

    @classmethod
    def certificate(
        cls,
        deployment_id: int,
        mac: str,
        pkcs12_base64: str,
        *,
        password_item: tuple[str, str] | None = None,
        certificate_item: str = ITEM_WBM_CERTIFICATE,
        info_item: str = ITEM_WBM_CERTIFICATE_INFO,
        check_first: ExpectedCert | None = None,
    ) -> Job:
        """A write job for a WBM certificate; ``password_item`` is ``(item name, password)`` (D7), sent first;
        ``check_first`` (the certificate as expected in the phone's info) makes it read the info before writing.

        Raises:
            ProtocolError: for an invalid MAC or an empty PKCS#12.
        """
        items: list[Item] = []
        if password_item is not None:
            items.append(Item(password_item[0], password_item[1]))
        if not pkcs12_base64.strip():
            raise ProtocolError("empty PKCS#12")
        items.append(Item(certificate_item, pkcs12_base64))
        return cls(deployment_id, mac, JobMode.WRITE, tuple(items), info_item, check_first)

    @classmethod
    def verify(cls, deployment_id: int, mac: str, *, info_item: str = ITEM_WBM_CERTIFICATE_INFO) -> Job:
        """A verify-only job (ReadItems of ``info_item``).

        Raises:
            ProtocolError: for an invalid MAC.
        """
        return cls(deployment_id, mac, JobMode.VERIFY, (), info_item)


@dataclass(frozen=True)
class Serve:
    """D10 passed: carry out ``job``."""

    job: Job


@dataclass(frozen=True)
class Defer:
    """A write is pending but the phone started this call itself (D10): no key here, contact-me later."""

    deployment_id: int


@dataclass(frozen=True)
class Refuse:
    """A job is pending but this call failed D10 (``reason`` says which check)."""

    reason: str
    deployment_id: int | None = None


@dataclass(frozen=True)
class NoJob:
    """Nothing is pending for the phone."""


#: The adapter's decision for a phone's opening message.
Admission = Serve | Defer | Refuse | NoJob


def deployment_of(admission: Admission) -> int | None:
    """The deployment an admission is about (``None`` for :class:`NoJob`)."""
    match admission:
        case Serve(job=job):
            return job.deployment_id
        case Defer(deployment_id=deployment_id) | Refuse(deployment_id=deployment_id):
            return deployment_id
        case NoJob():
            return None
        case _:
            assert_never(admission)


__all__ = ["Admission", "Defer", "Job", "JobMode", "NoJob", "Refuse", "Serve", "deployment_of"]
