"""Reports over bench and accuracy results: ``report.md`` and a self-contained ``report.html``."""

from ltmp_deploy.report.accuracy import accuracy_document, read_accuracy, tokens_summary, variant_entry, write_accuracy
from ltmp_deploy.report.document import ReportFiles, write_report

__all__ = [
    "ReportFiles",
    "accuracy_document",
    "read_accuracy",
    "tokens_summary",
    "variant_entry",
    "write_accuracy",
    "write_report",
]
