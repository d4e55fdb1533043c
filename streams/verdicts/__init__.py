"""Promotion verdicts: an anytime-valid confidence sequence on the paired loss difference.

Pure logic (no Kafka, no faust): :mod:`~streams.verdicts.confseq` is the statistic,
:mod:`~streams.verdicts.decide` turns it and the guardrails into a decision.
"""
