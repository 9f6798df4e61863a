"""The rule registry: run every rule, keep what each said, rank the findings.

Each rules_*.py module lists its own rules in RULES, in the order their results are shown; a new
rule is a function plus one entry there (docs/architecture.md)."""
from __future__ import annotations

from . import rules_kernel, rules_memcg, rules_uma
from .model import Finding, RuleResult
from .rules_common import SEVERITY_ORDER, Ctx, Skip

RULES = rules_uma.RULES + rules_memcg.RULES + rules_kernel.RULES


def rank(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then most bytes, then rule name (a total order: stable output)."""
    return sorted(findings, key=lambda x: (SEVERITY_ORDER[x.severity], -x.bytes, x.rule))


def run_rules(ctx: Ctx) -> tuple[list[Finding], list[RuleResult]]:
    findings, results = [], []
    for rule in RULES:
        out = rule(ctx)
        if isinstance(out, Skip):
            results.append(RuleResult(rule.__name__, "silent", out.reason))
        elif out is None:
            results.append(RuleResult(rule.__name__, "clear", "checked: nothing to report"))
        else:
            findings.append(out)
            results.append(RuleResult(rule.__name__, "raised"))
    return rank(findings), results
