"""Features: `posts_clean/ds=D` -> `features/ds=D`, one row per post (post_id, content_hash,
photo_hash, ResNet50 image vector 2048-d, MiniLM caption vector 384-d), embedded in shards on GPU
pods and merged; `store` is the one reader the learning and report stages use."""
