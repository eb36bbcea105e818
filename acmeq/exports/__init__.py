"""Exports and reports (issue #13): campaigns and donations as CSV, XLSX or PDF, and reports.

* :mod:`acmeq.exports.spec` -- what is asked for (kind, format, filters) and table shapes;
* :mod:`acmeq.exports.queries` -- filtered statements, keyset pages, summaries;
* :mod:`acmeq.exports.writers` / :mod:`acmeq.exports.pdf` -- streaming CSV, XLSX and PDF;
* :mod:`acmeq.exports.privacy` -- who may export personal data;
* :mod:`acmeq.exports.runner` -- records, temporary files, atomic publication, progress;
* :mod:`acmeq.exports.reports` / :mod:`acmeq.exports.report_render` /
  :mod:`acmeq.exports.report_runner` -- generate_report: numbers, drawing, running;
* :mod:`acmeq.exports.notify` -- the e-mail when a file is ready (or failed);
* :mod:`acmeq.exports.demo` -- the demo's export step.

The jobs are ``export_campaigns``, ``export_donations`` (queue ``exports``) and
``generate_report`` (queue ``reports``) in :mod:`acmeq.jobs`.
"""
