"""The security team's web console, served by the API listener at ``/ui/`` (``/`` redirects there), never on the
phone-facing listeners.

Server-rendered Jinja2 pages (:mod:`~certmgr.console.render`, ``templates/``) that work with JavaScript off; the
vendored htmx 2 (``static/``, see ``VENDORED.txt``) only enhances them (live search, progress that refreshes
itself). No inline script or style: the Content-Security-Policy of :mod:`~certmgr.console.security` forbids both.

Logins use the API tokens and open server-side sessions (:mod:`~certmgr.console.sessions`,
:mod:`~certmgr.console.auth`). The pages read through small read models (:mod:`~certmgr.console.fleet`,
:mod:`~certmgr.console.overview`, :mod:`~certmgr.console.phone`, :mod:`~certmgr.console.waves`) and act through
the operator use cases of :mod:`certmgr.operations`, audited as ``console:<token name>``; bulk actions run as
server-side jobs (:mod:`~certmgr.console.bulk`).
"""
