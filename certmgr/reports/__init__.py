"""Audit evidence: report queries (rows streamed in batches), renderers (CSV, JSON, PDF) and signed manifests."""

from certmgr.reports.manifest import export_report, verify_export
from certmgr.reports.queries import ReportKind, ReportParams, ReportSpec, build_report, parse_kind
from certmgr.reports.render import ReportFormat, parse_format

__all__ = [
    "ReportFormat",
    "ReportKind",
    "ReportParams",
    "ReportSpec",
    "build_report",
    "export_report",
    "parse_format",
    "parse_kind",
    "verify_export",
]
