"""A controlled experiment in miniature on the synthetic data (``scripts/experiment.py``).

It answers three questions with numbers: does Stage II learn pose-guided generation on held-out
identities (:mod:`.transfer_eval`), is Stage III's encoder more pose-invariant than Stage I's, and
does Stage III improve re-ID over several seeds (:mod:`.measures`, :mod:`.runner`); :mod:`.report`
writes the page, ``results.json`` and the printed tables.
"""
