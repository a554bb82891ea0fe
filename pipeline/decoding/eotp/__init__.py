"""EoTP rules, one class each, like the policies: when a sample's text has ended and its sequence is cut.

``decode.eotp=false`` is :class:`EndRule` itself (nothing cut); ``decode.eotp_rule`` names the others. A new rule is
a small file here and one entry in :data:`RULES`.
"""

from __future__ import annotations

from pipeline.decoding.eotp.base import EndRule, Sequences, Step
from pipeline.decoding.eotp.committed import Committed
from pipeline.decoding.eotp.learn2pd import Learn2PD
from pipeline.decoding.eotp.learn2pd_filled import Learn2PDFilled
from pipeline.decoding.settings import DecodeSettings

RULES: dict[str, type[EndRule]] = {cls.name: cls for cls in (Committed, Learn2PD, Learn2PDFilled)}


def build_end_rule(settings: DecodeSettings) -> EndRule:
    """The rule a decode setting names (the one place an ``eotp_rule`` becomes a class)."""
    return RULES[settings.eotp_rule](settings) if settings.eotp else EndRule(settings)


__all__ = ["RULES", "EndRule", "Sequences", "Step", "build_end_rule"]
