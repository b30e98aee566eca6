"""Ingest: MySQL `posts` changed in a day -> `posts_raw/ds=D` (one consistent read), then Great
Expectations, caption sanitising and photo checks -> `posts_clean/ds=D` and `quarantine/ds=D`
(every bad row with a reason); `reconcile` proves raw = clean + quarantined. `source_check`
re-reads a sample of posts to check the labels' assumption (a count never moves without
`updated_at`) -> `source_check/ds=D`."""
