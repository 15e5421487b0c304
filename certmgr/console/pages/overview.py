"""``/ui/``: the fleet at a glance — phones by status, proof of serving, the 26-week expiry forecast, renewal
waves against delivery capacity, recent failures, the audit chain and the CA's expiry."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from certmgr.api.deps import RuntimeDep
from certmgr.console.auth import User
from certmgr.console.charts import Bar, bar_chart
from certmgr.console.overview import overview
from certmgr.console.pages.common import ROUTE
from certmgr.console.render import days_left, expiry_word, render_page
from certmgr.db.engine import session_scope
from certmgr.db.models import DeviceStatus
from certmgr.errors import CertmgrError

router = APIRouter(**ROUTE)  # type: ignore[arg-type]


@router.get("/ui")
def ui_root() -> Response:
    """``/ui`` → ``/ui/``."""
    from fastapi.responses import RedirectResponse

    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/")
def overview_page(request: Request, rt: RuntimeDep, _user: User) -> Response:
    """The overview."""
    now = rt.clock.now()
    with session_scope(rt.engine) as session:
        figures = overview(session, now)
    waves = request.app.state.console_waves.get()
    ca_rows = []
    ca_problem = None
    try:
        info = rt.ca_info()
        certs = [("issuing", info.issuing_cert)] + ([("root", info.root_cert)] if info.root_cert is not None else [])
        for role, cert in certs:
            left = days_left(cert.not_valid_after_utc, now)
            ca_rows.append(
                {
                    "role": role,
                    "subject": cert.subject.rfc4514_string(),
                    "not_after": cert.not_valid_after_utc,
                    "days": left,
                    "word": expiry_word(left),
                }
            )
    except CertmgrError as exc:
        ca_problem = exc.message
    tones = []
    for bucket in figures.weeks:
        days = bucket.week * 7
        tones.append("critical" if days < 7 else "soon" if days < 30 else "ok")
    bars = [Bar(f"W{b.week + 1}", b.count, tone) for b, tone in zip(figures.weeks, tones, strict=True)]
    chart = bar_chart(
        "forecast",
        "Certificates expiring per week, next 26 weeks",
        f"Bar chart: current certificates of phones in service expiring in each of the next 26 weeks, starting "
        f"{now:%Y-%m-%d}; {figures.expired} have already expired; total shown "
        f"{sum(b.count for b in figures.weeks)}. The table below lists the same numbers.",
        bars,
        label_every=2,
        empty="No current certificate expires in the next 26 weeks",
    )
    statuses = [(s.value, figures.by_status.get(s.value, 0)) for s in DeviceStatus]
    return render_page(
        request,
        "overview.html",
        {
            "figures": figures,
            "statuses": statuses,
            "chart": chart,
            "waves": waves,
            "ca_rows": ca_rows,
            "ca_problem": ca_problem,
        },
    )


__all__ = ["router"]
