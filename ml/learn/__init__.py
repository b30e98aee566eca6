"""Learning: labels from `posts_clean` (bins of comment counts), features from `features/`, a
split that is a pure function of each post, PCA + MLP and its baselines -> an MLflow run and a
registered model version (`challenger`); `promote` moves `champion` only through the gate."""
