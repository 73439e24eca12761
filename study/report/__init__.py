"""The study report: report.md with its figures, results.csv and fits.json (writer), the law
fits behind it (fits), the plain statements of agreement with the papers (findings), plots."""
from study.report.writer import write_report

__all__ = ["write_report"]
