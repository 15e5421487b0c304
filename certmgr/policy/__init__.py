"""Declarative policies: which key, validity, names, packaging and maintenance windows a phone gets.

Policies are TOML files in a directory (``policies/`` by default, see ``policies/README.md``), validated into
frozen pydantic models. Everything here is pure: no clock reads, the time is always an argument.
"""

from certmgr.policy.duration import format_duration, parse_duration
from certmgr.policy.loader import load_policies, load_policy_file
from certmgr.policy.model import (
    DEFAULT_POLICY_FILE,
    MatchSection,
    Pkcs12Section,
    Policy,
    PolicyDocument,
    PolicySet,
    RenewalSection,
    SanSection,
    SubjectSection,
    parse_policy,
)
from certmgr.policy.templates import (
    TEMPLATE_VARIABLES,
    RenderedNames,
    render_friendly_name,
    render_leaf_names,
    template_variables,
)
from certmgr.policy.windows import MaintenanceWindow, next_window_start, window_open

__all__ = [
    "DEFAULT_POLICY_FILE",
    "TEMPLATE_VARIABLES",
    "MaintenanceWindow",
    "MatchSection",
    "Pkcs12Section",
    "Policy",
    "PolicyDocument",
    "PolicySet",
    "RenderedNames",
    "RenewalSection",
    "SanSection",
    "SubjectSection",
    "format_duration",
    "load_policies",
    "load_policy_file",
    "next_window_start",
    "parse_duration",
    "parse_policy",
    "render_friendly_name",
    "render_leaf_names",
    "template_variables",
    "window_open",
]
