"""Demo data, never imported by production code: generated posts with a known engagement signal,
planted bad rows, reposts and photos -> the MySQL `posts` table and the image store."""
