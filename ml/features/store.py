"""The `features` dataset: building its rows, and the one reader of features by post id.

Training, the promotion gate and the weekly report all read features through `iter_features`,
so they see the same rows: one row per post (the first stored, should a partition hold two),
img ++ txt as float32. Reads filter on `post_id`, so Parquet statistics prune row groups instead
of loading a day whole.

Each row also carries `photo_hash`, a perceptual hash of the photo (`photo_hashes`): the split key
that keeps reposts of one photo in one split (`ml.learn.splits`). Partitions written before it
existed lack the column; they still load (`conform`, `feature_index`) and their posts are keyed by
id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ml.lake.schema import DATASET_FEATURES, FEATURES_SCHEMA, IMG_DIM, TXT_DIM


def vectors(arr: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """A fixed-size-list column as a (n, dim) numpy array (float16 as stored)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)


def _fixed(vecs: np.ndarray, dim: int) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(vecs.astype(np.float16).ravel()), dim)


def photo_hashes(pixels: Any) -> list[str]:
    """dHash of each uint8 (N, 3, H, W) image tensor, as 16 hex digits: grey, area-averaged to
    8 x 9, one bit per left/right brightness step. It survives re-encoding and resizing, so a
    reposted photo gets its original's hash. Hashes the pixels the image model sees (after EXIF
    orientation, resize and crop) on either decode path (Pillow or nvJPEG), on their device, one
    batch at a time: a few microseconds a photo. `imagehash` would need a PIL image per photo
    and is not in the lock."""
    import torch

    grey = pixels.float().mean(dim=1, keepdim=True)
    small = torch.nn.functional.adaptive_avg_pool2d(grey, (8, 9))[:, 0]
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(grey), 64).cpu().numpy()
    return [row.tobytes().hex() for row in np.packbits(bits, axis=1)]


def features_table(
    post_ids,
    hashes,
    img: np.ndarray,
    txt: np.ndarray,
    image_model: str,
    text_model: str,
    photo_hash: Sequence[str | None] | None = None,
) -> pa.Table:
    """Rows of the `features` dataset (FEATURES_SCHEMA); vectors are stored as float16;
    `photo_hash` (from `photo_hashes`) null when not given."""
    n = len(post_ids)
    return pa.table(
        {
            "post_id": pa.array(np.asarray(post_ids, dtype=np.int64)),
            "content_hash": pa.array(list(hashes), pa.string()),
            "img": _fixed(img.reshape(n, IMG_DIM), IMG_DIM),
            "txt": _fixed(txt.reshape(n, TXT_DIM), TXT_DIM),
            "image_model": pa.array([image_model] * n, pa.string()),
            "text_model": pa.array([text_model] * n, pa.string()),
            "photo_hash": pa.array([None] * n if photo_hash is None else photo_hash, pa.string()),
        },
        schema=FEATURES_SCHEMA,
    )


def conform(table: pa.Table) -> pa.Table:
    """Rows read from any `features` partition, in FEATURES_SCHEMA: a null `photo_hash` for rows
    written before it existed (they are copied from the cache as they are)."""
    if "photo_hash" not in table.column_names:
        table = table.append_column("photo_hash", pa.nulls(table.num_rows, pa.string()))
    return table.select(FEATURES_SCHEMA.names).cast(FEATURES_SCHEMA)


def read_rows(
    lake: Any, dataset: str, ds: str, ids: np.ndarray, columns: list[str] | None = None
) -> pa.Table | None:
    """Rows of the posts `ids` in a committed partition of `dataset` (features or one of its
    shards); None when the partition is not committed."""
    tables = [read_rows_of(lake, f, ids, columns) for f in lake.partition_files(dataset, ds)]
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def read_rows_of(lake: Any, path: str, ids: np.ndarray, columns: list[str] | None) -> pa.Table:
    """Rows of the posts `ids` in one Parquet file of the lake (post-id filter: pruned reads)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    flt = pc.field("post_id").isin(pa.array(ids, pa.int64()))
    return pq.read_table(path, columns=columns, filters=flt, filesystem=lake.fs)


def iter_features(
    lake: Any, ds: str, ids: np.ndarray, batch_rows: int = 16_384
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, set[str], set[str]]] | None:
    """Features of the posts `ids` in `features/ds`, streamed: (post ids, img float16 (n, 2048),
    txt float16 (n, 384), image models, text models) per batch of at most `batch_rows` rows, one
    row per post (the first stored). None when the day has no features partition. Memory is
    bounded by the batch, not by the day, and the vectors stay float16 until the caller puts
    them where they belong (`ml.learn.dataset.split_features` casts them into its one array)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files = lake.partition_files(DATASET_FEATURES, ds)
    if not files:
        return None
    want = pa.array(np.asarray(ids, np.int64), pa.int64())
    cols = ["post_id", "img", "txt", "image_model", "text_model"]

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, set[str], set[str]]]:
        seen: set[int] = set()
        for f in files:
            with lake.fs.open_input_file(f) as fh:
                pf = pq.ParquetFile(fh, pre_buffer=False)
                for rb in pf.iter_batches(batch_size=batch_rows, columns=cols):
                    rb = rb.filter(pc.is_in(rb.column("post_id"), value_set=want))
                    if rb.num_rows == 0:
                        continue
                    pid = rb.column("post_id").to_numpy()
                    keep = np.fromiter((p not in seen for p in pid.tolist()), bool, len(pid))
                    _, first = np.unique(pid, return_index=True)
                    keep &= np.isin(np.arange(len(pid)), first)
                    if not keep.any():
                        continue
                    rb = rb.filter(pa.array(keep))
                    pid = pid[keep]
                    seen.update(pid.tolist())
                    yield (
                        pid,
                        vectors(rb.column("img"), IMG_DIM),
                        vectors(rb.column("txt"), TXT_DIM),
                        set(pc.unique(rb.column("image_model")).to_pylist()),
                        set(pc.unique(rb.column("text_model")).to_pylist()),
                    )
                    del rb
        pa.default_memory_pool().release_unused()  # return the batches' buffers to the OS

    return batches()


def feature_index(lake: Any, ids: np.ndarray, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which posts have a row in `features/ds` of their own day (`ds[i]` for `ids[i]`), and the
    photo hash of that row (object array, None where unknown): only those two columns are read."""
    import pyarrow.parquet as pq

    mask = np.zeros(len(ids), bool)
    hashes = np.full(len(ids), None, dtype=object)
    for d in sorted(set(ds.tolist())):
        sel = np.flatnonzero(ds == d)
        files = lake.partition_files(DATASET_FEATURES, d)
        found: dict[int, str | None] = {}
        for f in files:
            cols = ["post_id"]
            if "photo_hash" in pq.read_schema(f, filesystem=lake.fs).names:
                cols.append("photo_hash")
            t = read_rows_of(lake, f, ids[sel], cols)
            ph = t["photo_hash"].to_pylist() if "photo_hash" in cols else [None] * t.num_rows
            for pid, h in zip(t["post_id"].to_pylist(), ph, strict=True):
                found.setdefault(pid, h)  # the first row of a post, as `iter_features`
        mask[sel] = np.isin(ids[sel], np.fromiter(found, np.int64, len(found)))
        hashes[sel] = [found.get(int(i)) for i in ids[sel]]
    return mask, hashes


def sample_features(
    lake: Any, days: Iterable[str], max_rows: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Up to `max_rows` embeddings (img, txt as float32) spread over the days' partitions, an
    equal share per day: a seeded random sample of each day's rows (the first rows of a file
    are the first posts the extract returned, in `updated_at` order: not the day's mix). Reads
    only the row groups that hold a drawn row. None when no day has any."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files_by_day = [(d, lake.partition_files(DATASET_FEATURES, d)) for d in days]
    files_by_day = [(d, f) for d, f in files_by_day if f]
    if not files_by_day:
        return None
    rng = np.random.default_rng(seed)
    quota = max(1, max_rows // len(files_by_day))
    imgs, txts = [], []
    for _, files in files_by_day:
        groups = []  # (file, row group, rows)
        for f in files:
            with lake.fs.open_input_file(f) as fh:
                meta = pq.ParquetFile(fh).metadata
            groups += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        sizes = np.array([n for _, _, n in groups], np.int64)
        total = int(sizes.sum())
        if total == 0:
            continue
        drawn = np.sort(rng.choice(total, min(quota, total), replace=False))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        which = np.searchsorted(starts, drawn, side="right") - 1
        for k in np.unique(which):
            f, g, _ = groups[k]
            rows = drawn[which == k] - starts[k]
            with lake.fs.open_input_file(f) as fh:
                rg = pq.ParquetFile(fh).read_row_group(int(g), columns=["img", "txt"])
            rg = rg.take(pa.array(rows))
            imgs.append(vectors(rg.column("img"), IMG_DIM).astype(np.float32))
            txts.append(vectors(rg.column("txt"), TXT_DIM).astype(np.float32))
    if not imgs:
        return None
    return np.concatenate(imgs), np.concatenate(txts)
