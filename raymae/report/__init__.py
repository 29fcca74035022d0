"""Reports a person looks at: the nightly scoring page and the evaluation page.

One module draws the pictures (:mod:`raymae.report.figures`: overlays and plots),
one reads scoring output (:mod:`raymae.report.dataset`), and two build pages:
:mod:`raymae.report.nightly` (``raymae report``) and
:mod:`raymae.report.evaluation` (``raymae evaluate``). Each page is one HTML
file with its pictures embedded, so it opens anywhere without a network: copied
out of object storage, attached to a ticket, or served as it is.
"""
