"""The renewal reconcile: the database side of renewal. Idempotent; the ``renewal-reconcile`` job calls it.

One run (:func:`reconcile_renewals`):

1. **Scan** every approved phone's *current* certificate (``device.current_certificate_id``) in two passes (never
   the PEM or the sealed key, never the whole fleet's rows in memory):

   a. the **first pass** (:func:`scan_first_pass`) is one statement run by the database (:func:`first_pass_sql`)
      whose result — device ids only — is handed on in parts of ``renewal_scan_batch``: it drops every row that
      is *plain* (nothing but the date can fire: not revoked, issued by the active CA under the phone's current
      policy digest, SANs exactly the phone's IP, no drift, no operator request) and whose base renewal time
      (:func:`~certmgr.renewal.planner.base_time`; the policies' values bound as a ``VALUES`` table) lies after
      the horizon. That is sound because a plan is never due before its base time (jitter and windows only
      delay); a NULL anywhere in the test keeps the row.
   b. the **second pass** loads the full planner columns of the few rows left (:func:`load_current`) in groups
      of ``renewal_scan_batch``.
2. **Decide** for each row of the second pass with the pure core: :func:`~certmgr.renewal.triggers.reissue_reasons`
   (revocation, CA rotation, policy change, address change, drift, manual request, renewal due) with the
   planner's due time (:func:`~certmgr.renewal.planner.plan_renewal`); a row whose names cannot change skips the
   SAN comparisons (:func:`decide`). Only plans due within
   ``renewal_horizon_hours`` are kept (small tuples), so memory follows the renewals coming up, not the fleet.
3. **Spread and limit**: the kept plans go through :func:`~certmgr.renewal.planner.spread` with
   ``renewal_max_per_hour``; what is due now after spreading is taken most urgent first. Certificates that
   are expired, revoked, serve the wrong address, drift or were requested by an operator are *immediate*:
   they are taken first and do not count against the hourly budget (a security team must never find an
   expired certificate). Everything else (scheduled renewals, CA rotation, policy change) is limited by the
   hourly budget left (``renewal_max_per_hour`` minus what was issued in the last hour) and everything by
   ``renewal_max_per_run``.
4. **Issue** each chosen one: key and certificate are built with no transaction open, then one short
   transaction per phone runs :func:`certmgr.deploy.reconcile.issue_and_queue`: it locks the device row
   (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), re-checks (our callback) that the phone still has the same
   current certificate and no newer pending one, supersedes the phone's unfinished deployments, records the
   certificate with its :class:`~certmgr.db.models.IssueReason` and a ``certificate.reissue`` audit event with
   every reason and explanation, and queues a deployment through the pipeline (which honours maintenance
   windows, the global concurrency limit and backoff).

Idempotence: a phone with a pending certificate newer than its current one is left alone (its renewal is
under way, or failed and is flagged: retried when the phone reports again after the failure, at most once per
``retry_max_seconds``, or at its deadline); a second run therefore issues nothing twice. A manual request
(:func:`request_renewal`, an audit event) overrides that, once: it counts only while no certificate was issued
for the phone after it.

What the subject/DNS comparison costs: rendering a policy's templates for a phone takes ~20 µs, too much for
100,000 phones per run; the expected subject and DNS names are rendered only when the policy changed or has DNS
templates. A subject template fed by a phone fact other than its IP (e.g. ``{e164}``) is therefore compared
at the next policy change or renewal, not when the number changes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Text, bindparam, cast, func, select, text
from sqlmodel import Session, col

from certmgr.audit.log import append_event
from certmgr.db.deployments import UNFINISHED_STATES
from certmgr.db.engine import session_scope
from certmgr.db.inlist import in_parts
from certmgr.db.locks import is_postgres
from certmgr.db.models import (
    AuditEvent,
    CARecord,
    CARole,
    Certificate,
    CertificateStatus,
    Deployment,
    Device,
    Enrollment,
    IssueReason,
)
from certmgr.db.types import UTCDateTime
from certmgr.deploy.queue import issue_and_queue
from certmgr.errors import CertmgrError
from certmgr.identity import DeviceIdentity, ip_address
from certmgr.inventory.enrollment import phone_by_mac
from certmgr.inventory.phones import assigned_policy, identity_of, phone_policy, policy_for
from certmgr.issuance.service import BuiltCertificate, build_certificate
from certmgr.pki.keys import PrivateKey, key_type_of
from certmgr.policy import Policy
from certmgr.policy.model import DEFAULT_RENEW_AT_FRACTION
from certmgr.renewal.planner import RenewalInput, RenewalPlan, plan_renewal, spread
from certmgr.renewal.triggers import (
    CertFacts,
    DeviceFacts,
    PolicyFacts,
    Reason,
    Trigger,
    drift_request_and_date_reasons,
    reissue_reasons,
    revocation_and_ca_reasons,
)

if TYPE_CHECKING:
    from certmgr.runtime import Runtime

log = logging.getLogger("certmgr.renewal")

KEY_CHUNK = 64  # keys generated per parallel batch during a renewal run
ACTOR = "renewal"
#: Audit action of an operator's request for a new certificate (see :func:`request_renewal`).
RENEWAL_REQUESTED = "device.renewal-requested"
#: How many recent manual requests one run considers.
MANUAL_LOOKBACK = 10_000

#: Triggers that do not wait for the hourly budget: the phone's certificate is unusable or untrusted now.
IMMEDIATE = frozenset({Trigger.REVOKED, Trigger.ADDRESS_CHANGE, Trigger.DRIFT, Trigger.MANUAL})
#: Reasons counted against the hourly budget (everything but first enrollment).
_BUDGET_REASONS = [r.value for r in IssueReason if r is not IssueReason.ENROLLMENT]


# --- the scan ----------------------------------------------------------------------------------------------
_COLUMNS = (
    col(Device.id),
    col(Device.mac),
    col(Device.ip),
    cast(col(Device.dns_names), Text),  # JSON lists as their text: see _json_strings
    col(Device.drift),
    col(Device.policy_name),
    col(Device.e164),
    col(Device.device_type),
    col(Device.software_version),
    col(Device.hostname),
    col(Certificate.id),
    col(Certificate.serial),
    col(Certificate.not_before),
    col(Certificate.not_after),
    cast(col(Certificate.sans), Text),
    col(Certificate.subject),
    col(Certificate.key_type),
    col(Certificate.issuer_fingerprint),
    col(Certificate.policy_name),
    col(Certificate.policy_digest),
    col(Certificate.status),
    col(Certificate.revoked_at),
    col(Certificate.created_at),
)


class CurrentRow(NamedTuple):
    """One phone and the planner-relevant columns of its current certificate (no PEM, no key). Immutable; a named
    tuple rather than a frozen dataclass because a run builds one per row due (100,000 after a CA rotation, in every
    run), and a frozen dataclass's constructor sets its 23 fields one by one (a tenth of planning such a fleet)."""

    device_id: int
    mac: str
    ip: str | None
    dns_names: tuple[str, ...]
    drift: bool
    device_policy: str | None
    e164: str | None
    device_type: str | None
    software_version: str | None
    hostname: str | None
    cert_id: int
    serial: str
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    subject: str
    key_type: Any
    issuer_fingerprint: str
    policy_name: str | None
    policy_digest: str | None
    status: str
    revoked_at: datetime | None
    created_at: datetime

    def identity(self) -> DeviceIdentity:
        """The phone's identity for policy selection and templates (:func:`certmgr.inventory.phones.identity_of`).

        Raises:
            InputError: if the stored IP is not an IP address.
        """
        return identity_of(self)


def _json_strings(text_: str | None) -> tuple[str, ...]:
    """A stored JSON list of strings. The shapes nearly every row has — ``[]`` and one string without escapes
    (``["IP:10.1.2.3"]``) — are read without the JSON decoder (which was an eighth of planning a whole fleet);
    anything else goes through it."""
    if not text_ or text_ == "[]":
        return ()
    if text_.startswith('["') and text_.endswith('"]') and '"' not in text_[2:-2] and "\\" not in text_:
        return (text_[2:-2],)
    return tuple(json.loads(text_))


def _current_row(r: Any) -> CurrentRow:
    values = list(r)
    values[3] = _json_strings(values[3])
    values[4] = bool(values[4])
    values[14] = _json_strings(values[14])
    values[20] = str(values[20])
    return CurrentRow._make(values)


def _read_current(session: Session, *where: Any, limit: int | None = None) -> Sequence[Any]:
    """The :data:`_COLUMNS` of the phones matching ``where`` joined to their current certificate, by device id.
    Run as Core on the transaction's connection: the statement selects columns, not entities, and the ORM's loading
    step over them was a fifth of planning a fleet whose every row is due."""
    statement = (
        select(*_COLUMNS)
        .join(Certificate, col(Certificate.id) == col(Device.current_certificate_id))
        .where(*where)
        .order_by(col(Device.id))
        .limit(limit)
    )
    return session.connection().execute(statement).all()


def scan_current(session: Session, batch: int) -> Iterator[list[CurrentRow]]:
    """Yield the approved phones with a current certificate in batches of ``batch``, ordered by device id
    (keyset pagination: each batch is one indexed range query; nothing else is held between batches)."""
    after = 0
    while True:
        rows = _read_current(
            session, col(Device.id) > after, col(Device.enrollment) == Enrollment.APPROVED.value, limit=batch
        )
        if not rows:
            return
        out = [_current_row(r) for r in rows]
        yield out
        after = out[-1].device_id
        if len(rows) < batch:
            return


#: Slack (seconds) on the first pass's horizon test: the epoch arithmetic is floating point.
_FIRST_PASS_SLACK_S = 1.0


@dataclass(frozen=True)
class _PolicyDates:
    """What the first pass needs of one policy."""

    digest: str
    renew_before_s: float | None
    fraction: float
    date_only: bool  # san.ip and no DNS templates: the SANs are exactly the phone's IP


def _policy_dates(policy: Policy) -> _PolicyDates:
    renewal = policy.renewal
    return _PolicyDates(
        digest=policy.digest,
        renew_before_s=renewal.renew_before.total_seconds() if renewal.renew_before is not None else None,
        fraction=renewal.renew_at_fraction if renewal.renew_at_fraction is not None else DEFAULT_RENEW_AT_FRACTION,
        date_only=bool(policy.san.ip and not policy.san.dns),
    )


#: Per dialect: validity as epoch seconds computed by the database (SQLite stores the UTC wall time as text,
#: PostgreSQL ``timestamptz``) and a JSON column as its text.
_EPOCH = {
    "sqlite": "((julianday({}) - 2440587.5) * 86400.0)",
    "postgresql": "extract(epoch from {})::float8",
}
_JSON_TEXT = {"sqlite": "{}", "postgresql": "{}::text"}
#: A bound timestamp in a VALUES row (SQLite: the column's text representation as bound, PostgreSQL: typed).
_TIME_PARAM = {"sqlite": ":{}", "postgresql": "CAST(:{} AS TIMESTAMP WITH TIME ZONE)"}


_SCAN_STATEMENT = (
    "{with_policies}SELECT d.id FROM device d JOIN certificate c ON c.id = d.current_certificate_id {join}"
    "WHERE d.enrollment = :approved {keep}ORDER BY d.id"
)


def first_pass_sql(dialect: str, policies: int, issuer: bool, manual: int) -> str:
    """The first pass's statement (step 1a of the module docstring) for ``policies`` date-only policies (bound as
    ``n0, g0, t0, f0`` …: name, digest, the ``not_after`` threshold of a renew-before policy or NULL, the lifetime
    fraction), with the active issuing CA's fingerprint bound as ``issuer`` when there is one, and ``manual``
    device ids bound as ``m0`` … that are always kept. Other parameters: ``approved``, ``revoked``, ``limit_s``
    (the horizon in epoch seconds). Selects the ids that need the full check, in id order.

    A row is dropped only when it is *plain* — nothing but its date can fire — and its base renewal time lies after
    the horizon; any NULL in the test (a policy that is gone or not date-only, a column missing) keeps the row.

    The date test of a renew-before policy compares ``not_after`` with ``horizon + renew_before`` in the column's
    own representation (no date arithmetic per row; :func:`first_pass_thresholds`): if ``not_after`` lies beyond
    it, the base time lies beyond the horizon whichever rule applies — ``not_after - renew_before`` when the
    lifetime is longer than ``renew_before``, and otherwise a time at or after ``not_before``, which is then at
    least ``not_after - renew_before``. A fraction policy computes its base time from epoch seconds.
    """
    epoch, as_text, as_time = _EPOCH[dialect], _JSON_TEXT[dialect], _TIME_PARAM[dialect]
    nb, na = epoch.format("c.not_before"), epoch.format("c.not_after")
    if policies:
        rows = ", ".join(
            f"(CAST(:n{i} AS TEXT), CAST(:g{i} AS TEXT), {as_time.format(f't{i}')}, CAST(:f{i} AS DOUBLE PRECISION))"
            for i in range(policies)
        )
        with_policies = f"WITH p(name, digest, t, frac) AS (VALUES {rows}) "
        join = "LEFT JOIN p ON p.name = d.policy_name "
        plain = " AND ".join(
            [
                "NOT d.drift",
                "c.revoked_at IS NULL",
                "c.status <> :revoked",
                *(["c.issuer_fingerprint = :issuer"] if issuer else []),
                "c.policy_name = d.policy_name",
                "c.policy_digest = p.digest",
                "d.ip IS NOT NULL",
                f"{as_text.format('d.dns_names')} = '[]'",
                f"{as_text.format('c.sans')} = '[\"IP:' || d.ip || '\"]'",
                *([f"d.id NOT IN ({', '.join(f':m{i}' for i in range(manual))})"] if manual else []),
                "c.not_after > c.not_before",
                f"(c.not_after > p.t OR (p.t IS NULL AND {nb} + ({na} - {nb}) * p.frac > :limit_s))",
            ]
        )
        keep = f"AND CASE WHEN {plain} THEN 0 ELSE 1 END = 1 "
    else:
        with_policies = join = keep = ""  # no date-only policy: every row needs the full check
    # Only fixed fragments and placeholder names are composed here; every value is a bound parameter.
    return _SCAN_STATEMENT.format(with_policies=with_policies, join=join, keep=keep)


def first_pass_thresholds(policies: Sequence[_PolicyDates], horizon: datetime) -> list[datetime | None]:
    """Per date-only policy of :func:`first_pass_sql`: the ``not_after`` beyond which a plain row of a
    renew-before policy is dropped (the horizon plus ``renew_before`` and the slack), None for a fraction policy."""
    slack = timedelta(seconds=_FIRST_PASS_SLACK_S)
    return [
        None if d.renew_before_s is None else horizon + timedelta(seconds=d.renew_before_s) + slack for d in policies
    ]


#: How many rows the first pass runs over: the approved phones with a current certificate.
_SCANNED = (
    "SELECT count(*) FROM device d JOIN certificate c ON c.id = d.current_certificate_id WHERE d.enrollment = :approved"
)


def _manual_ids(session: Session, macs: Collection[str]) -> list[int]:
    """Device ids of the phones with an open operator request, sorted (at most :data:`MANUAL_LOOKBACK`)."""
    found: list[int] = []
    for part in in_parts(sorted(macs)):
        found += session.execute(select(col(Device.id)).where(col(Device.mac).in_(part))).scalars()
    return sorted(found)


def scan_first_pass(
    session: Session,
    runtime: Runtime,
    horizon: datetime,
    issuing_ca: str | None,
    manual: Mapping[str, datetime],
    batch: int,
) -> Iterator[tuple[int, list[int]]]:
    """The first pass of the scan (step 1a of the module docstring): yields the device ids that need the full check
    (second pass) in parts of at most ``batch``, in id order, each with the number of rows read (the whole fleet's
    count with the first part, then 0). The test runs in the database (:func:`first_pass_sql`), one statement: only
    the kept ids leave it.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    dialect = "postgresql" if is_postgres(session) else "sqlite"
    eligible = [(p.name, d) for p in runtime.policies for d in [_policy_dates(p)] if d.date_only]
    params: dict[str, Any] = {
        "approved": Enrollment.APPROVED.value,
        "revoked": CertificateStatus.REVOKED.value,
        "limit_s": horizon.timestamp() + _FIRST_PASS_SLACK_S,
        "issuer": issuing_ca,
    }
    thresholds = first_pass_thresholds([d for _name, d in eligible], horizon)
    for i, ((name, dates), threshold) in enumerate(zip(eligible, thresholds, strict=True)):
        params |= {f"n{i}": name, f"g{i}": dates.digest, f"t{i}": threshold, f"f{i}": dates.fraction}
    times = [bindparam(f"t{i}", type_=UTCDateTime()) for i in range(len(eligible))]
    manual_ids = _manual_ids(session, manual.keys())
    params |= {f"m{i}": m for i, m in enumerate(manual_ids)}
    scanned = int(session.execute(text(_SCANNED), {"approved": params["approved"]}).scalar_one())
    if not scanned:
        return
    # One statement, fetched whole: on PostgreSQL a statement per id range re-read the certificate table each time
    # (hash join), and a streamed (server-side cursor) result runs without parallel workers. The ids kept are those
    # the run plans anyway: their plans take far more memory than the ids.
    statement = text(first_pass_sql(dialect, len(eligible), issuing_ca is not None, len(manual_ids))).bindparams(*times)
    kept = list(session.execute(statement, params).scalars())
    for start in range(0, max(len(kept), 1), batch):
        yield (scanned if start == 0 else 0), kept[start : start + batch]


def load_current(session: Session, device_ids: Sequence[int]) -> list[CurrentRow]:
    """The full planner columns (step 1b) of the phones ``device_ids`` that have a current certificate, by id."""
    if not device_ids:
        return []
    lo, hi = min(device_ids), max(device_ids)
    # Most of an id range (every row due: mass enrollment, CA rotation) is read as the range and filtered here, not
    # as an IN list of thousands of parameters, whose statement the driver re-parses each time (on PostgreSQL that
    # parsing cost more than the read).
    dense = len(device_ids) * 2 >= hi - lo + 1
    wanted = set(device_ids) if dense else None
    rows = _read_current(session, col(Device.id).between(lo, hi) if dense else col(Device.id).in_(list(device_ids)))
    return [_current_row(r) for r in rows if wanted is None or r[0] in wanted]


# --- decisions ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A phone whose current certificate should be replaced, and why."""

    device_id: int
    mac: str
    cert_id: int
    serial: str
    not_after: datetime
    reasons: tuple[Reason, ...]
    plan: RenewalPlan
    override_pending: bool = False

    @property
    def immediate(self) -> bool:
        """Expired, or a trigger that does not wait for the hourly budget."""
        return self.plan.expired or any(r.trigger in IMMEDIATE for r in self.reasons)

    @property
    def issue_reason(self) -> IssueReason:
        """The stored reason: the first fired trigger (revocation first, renewal last)."""
        return IssueReason(self.reasons[0].issue_reason)


def _policy_changed(row: CurrentRow, policy: Policy) -> bool:
    """The certificate was issued under another policy (name) or another version of it (digest)."""
    return row.policy_digest != policy.digest or row.policy_name != policy.name


@dataclass
class _PolicyCache:
    runtime: Runtime
    facts: dict[str, PolicyFacts] = field(default_factory=dict)

    def policy(self, row: CurrentRow) -> Policy:
        policies = self.runtime.policies
        assigned = assigned_policy(policies, row.device_policy)  # nearly every row: no identity to build
        return assigned if assigned is not None else policy_for(policies, row.device_policy, row.identity()).policy

    def policy_facts(self, policy: Policy, row: CurrentRow) -> PolicyFacts:
        if _policy_changed(row, policy) or policy.san.dns:
            return PolicyFacts.from_policy(policy, row.identity())
        cached = self.facts.get(policy.name)
        if cached is None:
            cached = self.facts[policy.name] = PolicyFacts.from_policy(policy)
        return cached


def _names_cannot_change(row: CurrentRow, policy: Policy, policy_changed: bool) -> bool:
    """A cheap pre-check: True when neither ``policy-change`` nor ``address-change`` can fire for ``row`` — the
    same policy (name and digest) with no DNS names in it, no DNS names for the phone, and the certificate's SANs
    exactly the phone's IP, which is what nearly every row of a fleet looks like. Anything else takes the full
    :func:`~certmgr.renewal.triggers.reissue_reasons` path, so a False here only costs time."""
    return not policy_changed and not policy.san.dns and not row.dns_names and row.sans == (f"IP:{row.ip}",)


def decide(
    row: CurrentRow,
    policy: Policy,
    policy_facts: PolicyFacts,
    issuing_ca: str | None,
    now: datetime,
    manual_at: datetime | None = None,
) -> tuple[RenewalPlan, list[Reason]]:
    """The plan and the fired reissue reasons of one row (pure): what
    :func:`~certmgr.renewal.triggers.reissue_reasons` gives for the row's facts.

    A row whose names cannot change (:func:`_names_cannot_change`: every row of a fleet after a mass enrollment or
    a CA rotation, when every row is decided in every run) takes only the triggers about the certificate's state,
    the phone's flags and the date, without building and comparing the SAN sets (``reissue_reasons`` was ~40 % of
    deciding such a row under cProfile).

    Raises:
        ValueError: if the row's dates are inconsistent or its address is not an IP address.
    """
    manual = manual_at is not None and manual_at >= row.created_at
    plan = plan_renewal(RenewalInput.from_policy(row.cert_id, row.mac, row.not_before, row.not_after, policy), now)
    policy_changed = _policy_changed(row, policy)
    revoked = row.status == CertificateStatus.REVOKED.value or row.revoked_at is not None
    if _names_cannot_change(row, policy, policy_changed):
        ip_address(str(row.ip))  # the full path refuses a stored address that is not an IP: so does this one
        return plan, revocation_and_ca_reasons(
            row.cert_id, revoked, row.issuer_fingerprint, issuing_ca
        ) + drift_request_and_date_reasons(row.drift, manual, plan, row.not_after, now)
    cert = CertFacts(
        cert_id=row.cert_id,
        not_before=row.not_before,
        not_after=row.not_after,
        sans=row.sans,
        key_type=row.key_type,
        issuer_fingerprint=row.issuer_fingerprint,
        policy_name=row.policy_name,
        policy_digest=row.policy_digest,
        subject=row.subject,
        revoked=revoked,
    )
    return plan, reissue_reasons(cert, DeviceFacts.from_row(row, manual=manual), policy_facts, issuing_ca, now, plan)


@dataclass
class RenewalReport:
    """What one run saw and did (the order of ``issued`` is the order of issuance: most urgent first)."""

    scanned: int = 0
    planned: int = 0
    due: int = 0
    issued: list[str] = field(default_factory=list)
    skipped_in_progress: int = 0
    deferred_by_limit: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    #: Of ``issued``: immediate ones (expired, or an immediate trigger), which the hourly budget does not hold back,
    #: and scheduled ones issued past the budget because no hour with room was left before their latest time.
    issued_immediate: int = 0
    issued_over_limit: int = 0

    @property
    def issued_within_budget(self) -> int:
        """Issued under the hourly budget: what ``renewal_max_per_hour`` bounds."""
        return len(self.issued) - self.issued_immediate - self.issued_over_limit


def _active_issuing_ca(session: Session) -> str | None:
    row = session.execute(
        select(col(CARecord.fingerprint_sha256))
        .where(col(CARecord.active).is_(True), col(CARecord.role) == CARole.ISSUING.value)
        .order_by(col(CARecord.id).desc())
        .limit(1)
    ).first()
    return str(row[0]) if row else None


def _manual_requests(session: Session) -> dict[str, datetime]:
    rows = session.execute(
        select(col(AuditEvent.subject_id), col(AuditEvent.at))
        .where(col(AuditEvent.action) == RENEWAL_REQUESTED)
        .order_by(col(AuditEvent.id).desc())
        .limit(MANUAL_LOOKBACK)
    ).all()
    latest: dict[str, datetime] = {}
    for mac, at in rows:
        if mac and mac not in latest:
            latest[str(mac)] = at
    return latest


@dataclass(frozen=True)
class _Pending:
    """A phone's newest pending certificate newer than its current one."""

    created: datetime
    in_progress: bool  # a deployment of it is unfinished
    seen_after_failure: datetime | None  # its deployments all ended unsuccessfully: when they ended, if the phone
    # reported since (None otherwise)


def _pending_successors(session: Session, rows: Sequence[CurrentRow]) -> dict[int, _Pending]:
    """Device id → its newest pending certificate newer than the current one (see :class:`_Pending`)."""
    if not rows:
        return {}
    current = {r.device_id: r.cert_id for r in rows}
    newest: dict[int, tuple[int, datetime]] = {}
    for device_id, cert_id, created in session.execute(
        select(col(Certificate.device_id), col(Certificate.id), col(Certificate.created_at)).where(
            col(Certificate.device_id).in_(list(current)),
            col(Certificate.status) == CertificateStatus.PENDING.value,
        )
    ).all():
        if cert_id > current[device_id] and (device_id not in newest or cert_id > newest[device_id][0]):
            newest[device_id] = (cert_id, created)
    if not newest:
        return {}
    unfinished = {s.value for s in UNFINISHED_STATES}
    busy: set[int] = set()
    ended: dict[int, datetime] = {}
    for cert_id, state, finished in session.execute(
        select(col(Deployment.certificate_id), col(Deployment.state), col(Deployment.finished_at)).where(
            col(Deployment.certificate_id).in_([c for c, _ in newest.values()])
        )
    ).all():
        if str(state) in unfinished:
            busy.add(int(cert_id))
        elif finished is not None and (cert_id not in ended or finished > ended[cert_id]):
            ended[int(cert_id)] = finished
    seen = dict(
        session.execute(select(col(Device.id), col(Device.last_seen_at)).where(col(Device.id).in_(list(newest)))).all()
    )
    out: dict[int, _Pending] = {}
    for device_id, (cert_id, created) in newest.items():
        failed_at = ended.get(cert_id) if cert_id not in busy else None
        last_seen = seen.get(device_id)
        back = failed_at if failed_at is not None and last_seen is not None and last_seen > failed_at else None
        out[device_id] = _Pending(created, cert_id in busy, back)
    return out


def issued_in_last_hour(session: Session, now: datetime) -> int:
    """Certificates issued for another reason than first enrollment during the hour before ``now``."""
    return int(
        session.execute(
            select(func.count())
            .select_from(Certificate)
            .where(
                col(Certificate.created_at) > now - timedelta(hours=1),
                col(Certificate.reason).in_(_BUDGET_REASONS),
            )
        ).scalar_one()
    )


def plan_fleet(runtime: Runtime, now: datetime) -> tuple[list[Candidate], RenewalReport]:
    """Steps 1 to 3 of the module docstring: the candidates to issue now, most urgent first, within the limits.

    Raises:
        DatabaseError: if the database cannot be reached.
    """
    settings = runtime.settings
    report = RenewalReport()
    horizon = now + timedelta(hours=settings.renewal_horizon_hours)
    cache = _PolicyCache(runtime)
    kept: dict[int, Candidate] = {}  # cert id → candidate (due within the horizon or triggered)
    retry = timedelta(seconds=settings.retry_max_seconds)  # a failed renewal of a phone seen again: retried after
    plans: list[RenewalPlan] = []
    with session_scope(runtime.engine) as session:
        issuing = _active_issuing_ca(session)
        manual = _manual_requests(session)
        first = scan_first_pass(session, runtime, horizon, issuing, manual, settings.renewal_scan_batch)
        for read, ids in first:
            report.scanned += read
            batch = load_current(session, ids)
            fired: list[tuple[CurrentRow, RenewalPlan, list[Reason]]] = []
            for row in batch:
                try:
                    policy = cache.policy(row)
                    plan, reasons = decide(
                        row, policy, cache.policy_facts(policy, row), issuing, now, manual.get(row.mac)
                    )
                except (ValueError, CertmgrError) as exc:
                    log.warning("cannot plan the renewal of %s: %s", row.mac, exc)
                    continue
                if reasons or plan.due_at <= horizon:
                    fired.append((row, plan, reasons))
            if not fired:
                continue
            pending = _pending_successors(session, [r for r, _, _ in fired])
            for row, plan, reasons in fired:
                manual_at = manual.get(row.mac)
                override = False
                if row.device_id in pending:
                    successor = pending[row.device_id]
                    # A renewal under way is left alone. One whose deployment ended without success is retried on
                    # an operator's request, when the current certificate reaches its deadline, or once the phone
                    # reported again after the failure (at most once per longest delivery backoff): a phone that
                    # was away during its renewal must not wait for the deadline, when one more absence lets
                    # its certificate expire.
                    back = successor.seen_after_failure
                    override = (manual_at is not None and manual_at > successor.created) or (
                        not successor.in_progress
                        and (plan.expired or plan.due_at >= plan.latest or (back is not None and back + retry <= now))
                    )
                    if not override:
                        if reasons:
                            report.skipped_in_progress += 1
                        continue
                if not reasons:
                    plans.append(plan)  # due later within the horizon: takes its place in the spread
                    continue
                # A trigger other than the due date makes the certificate due now.
                if plan.due_at > now:
                    plan = replace(plan, due_at=now, reason="overdue")
                kept[row.cert_id] = Candidate(
                    row.device_id, row.mac, row.cert_id, row.serial, row.not_after, tuple(reasons), plan, override
                )
                plans.append(plan)
        used = issued_in_last_hour(session, now)
    report.planned = len(plans)
    immediate = sorted(
        (c for c in kept.values() if c.immediate), key=lambda c: (not c.plan.expired, c.not_after, c.cert_id)
    )
    budget = max(0, settings.renewal_max_per_hour - used)
    spread_plans = spread(
        [p for p in plans if p.cert_id not in {c.cert_id for c in immediate}], settings.renewal_max_per_hour, now
    )
    chosen: list[Candidate] = list(immediate)
    for plan in spread_plans:
        cand = kept.get(int(plan.cert_id))
        if cand is None or plan.due_at > now:
            continue
        if plan.over_limit or plan.expired:
            chosen.append(replace(cand, plan=plan))  # urgency wins over the limit (see spread)
        elif budget > 0:
            budget -= 1
            chosen.append(cand)
        else:
            report.deferred_by_limit += 1
    report.due = len(chosen)
    limit = settings.renewal_max_per_run
    if len(chosen) > limit:
        report.deferred_by_limit += len(chosen) - limit
        chosen = chosen[:limit]
    return chosen, report


# --- issuance ----------------------------------------------------------------------------------------------
def _load_identity(runtime: Runtime, device_id: int) -> tuple[DeviceIdentity, Policy] | None:
    with session_scope(runtime.engine) as session:
        device = session.get(Device, device_id)
        if device is None or device.ip is None:
            return None
        return phone_policy(runtime.policies, device, device.policy_name)


def _record(runtime: Runtime, cand: Candidate, built: BuiltCertificate, now: datetime) -> bool:
    def still_needed(session: Session, device: Device) -> bool:
        if device.current_certificate_id != cand.cert_id:
            return False  # the phone moved on meanwhile; the next run looks again
        newer = session.execute(
            select(col(Certificate.id)).where(
                col(Certificate.device_id) == cand.device_id,
                col(Certificate.status) == CertificateStatus.PENDING.value,
                col(Certificate.id) > cand.cert_id,
                col(Certificate.created_at) >= now if cand.override_pending else col(Certificate.id) > 0,
            )
        ).first()
        return newer is None  # else a renewal is already under way (or was issued by this very run elsewhere)

    with session_scope(runtime.engine) as session:
        queued = issue_and_queue(
            session,
            runtime,
            cand.device_id,
            built,
            reason=cand.issue_reason,
            actor=ACTOR,
            now=now,
            still_needed=still_needed,
            reissue={
                "previous_serial": cand.serial,
                "reason": cand.issue_reason.value,
                "triggers": [r.trigger.value for r in cand.reasons],
                "explanations": [r.explanation for r in cand.reasons],
                "plan": cand.plan.reason,
                "not_after": cand.not_after.isoformat(),
            },
        )
        return queued is not None


def reconcile_renewals(runtime: Runtime, now: datetime) -> RenewalReport:
    """One renewal run (see the module docstring). Idempotent; bounded by ``renewal_max_per_run``.

    Raises:
        DatabaseError: if the database cannot be reached. (A phone whose issuance fails is audited and skipped.)
    """
    candidates, report = plan_fleet(runtime, now)
    keys: list[PrivateKey] = []
    for n, cand in enumerate(candidates):
        loaded = _load_identity(runtime, cand.device_id)
        if loaded is None:
            continue
        identity, policy = loaded
        if not keys:  # key generation dominates: the next chunk of keys at once, on every core
            keys = runtime.generate_keys([policy.key_type] * min(KEY_CHUNK, len(candidates) - n))
        key = keys.pop() if key_type_of(keys[-1]) is policy.key_type else None
        try:
            built = build_certificate(identity, policy, runtime.issuer(), now, key=key)
        except CertmgrError as exc:
            report.failed += 1
            with session_scope(runtime.engine) as session:
                append_event(
                    session,
                    at=now,
                    actor=ACTOR,
                    action="certificate.issue-failed",
                    subject_type="device",
                    subject_id=cand.mac,
                    details={"reason": exc.message, "triggers": [r.trigger.value for r in cand.reasons]},
                )
            continue
        if _record(runtime, cand, built, now):
            report.issued.append(cand.mac)
            if cand.immediate:
                report.issued_immediate += 1
            elif cand.plan.over_limit:  # (an expired plan is immediate)
                report.issued_over_limit += 1
            why = cand.issue_reason.value
            report.reasons[why] = report.reasons.get(why, 0) + 1
        else:
            report.skipped_in_progress += 1
    return report


def request_renewal(session: Session, mac: str, now: datetime, actor: str, note: str | None = None) -> Device:
    """Record an operator's request for a new certificate for ``mac`` (in the caller's transaction); the next
    renewal run issues it (trigger ``manual``), once.

    Raises:
        InputError: invalid MAC. NotFoundError: unknown phone.
    """
    device = phone_by_mac(session, mac)
    mac = device.mac
    append_event(
        session,
        at=now,
        actor=actor,
        action=RENEWAL_REQUESTED,
        subject_type="device",
        subject_id=mac,
        details={"note": note} if note else {},
    )
    return device


__all__ = [
    "IMMEDIATE",
    "RENEWAL_REQUESTED",
    "Candidate",
    "CurrentRow",
    "RenewalReport",
    "decide",
    "first_pass_sql",
    "issued_in_last_hour",
    "load_current",
    "plan_fleet",
    "reconcile_renewals",
    "request_renewal",
    "scan_current",
    "scan_first_pass",
]
