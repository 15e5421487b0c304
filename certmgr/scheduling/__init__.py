"""The scheduler adapter: periodic jobs with explicit ids that call idempotent reconcile services.

* :mod:`certmgr.scheduling.scheduler` — APScheduler (memory job store only) and the job table;
* :mod:`certmgr.scheduling.tasks` — the probe sweep, expiry / CA notifications and audit checkpoints;
* :mod:`certmgr.db.locks` — leadership (PostgreSQL advisory locks), row claims and node names.

Durable state lives in certmgr's tables and the audit log, never in the scheduler.
"""
