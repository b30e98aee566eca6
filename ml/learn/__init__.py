"""Learning: labels from `posts_clean` (each post's comment count H days after posting, binned),
features of each post as posted from `features/`, a split that is a pure function of each post,
PCA + MLP and its baselines -> an MLflow run and a registered model version (`challenger`) that
records its target and encoders; `promote` moves `champion` only through the gate."""
