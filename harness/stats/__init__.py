"""Statistics on records (numpy/scipy): intervals, paired tests, variance studies.

Every reported number carries its sample size and an interval (docs/architecture.md, "Statistics").

- ``intervals``: closed-form intervals for means that stay inside their quantity's support (Wilson
  for proportions, at the effective sample size when items repeat; Satterthwaite chi-square for
  means of non-negative quantities; Student-t otherwise, cut to a known range where one applies),
  the report's one level (``LEVEL``, ``ALPHA``) and the ``Interval`` record (estimate, limits, n,
  method, support).
- ``bootstrap``: percentile and BCa bootstrap intervals for any statistic, resampling rows or whole
  items (cluster bootstrap); a batch form for simulation studies.
- ``paired``: pairing on shared keys, paired bootstrap (symmetric bootstrap-t), sign-flip
  permutation test, exact McNemar, Newcombe's interval for paired proportions, Holm correction, and
  the ``Comparison`` verdicts of the regression gate ("worse" only when significant and beyond the
  tolerance).
- ``seeds``: aggregation over training seeds, rliable style: mean, IQM, stratified bootstrap over
  seeds within tasks, probability of improvement; results state the number of seeds.
- ``variance``: interval on a variance ratio (F for normal data, bootstrap otherwise) and the
  chi-square interval of one variance.
- ``power``: minimum detectable effect and required sample size (normal approximation).

Resampling functions take a ``seed`` and draw only from ``np.random.default_rng(seed)``; none
touches NumPy's global random state.
"""
