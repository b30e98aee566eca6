-- The source table the app writes and postflow reads (SELECT only).
-- updated_at is indexed: every nightly extract is a range scan on it. It moves on every change
-- of the row (ON UPDATE), comment_count included: the labels rely on it, and
-- `python -m ml check-source` checks it every night.
CREATE TABLE IF NOT EXISTS posts (
  id            BIGINT       NOT NULL,
  author_id     BIGINT       NULL,
  caption       TEXT         NULL,
  image_uri     VARCHAR(1024) NULL,
  hearts        INT          NULL,
  comment_count INT          NULL,
  created_at    DATETIME(6)  NULL,
  updated_at    DATETIME(6)  NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (id),
  KEY idx_posts_updated_at (updated_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;
