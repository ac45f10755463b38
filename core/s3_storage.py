"""`Storage` on an S3-compatible bucket (AWS S3, MinIO, Ceph, moto's server) through boto3.

- Writes stream: bytes are buffered up to settings.s3_part_bytes and sent as the parts of a
  multipart upload, so memory stays at one part whatever the file size; the object appears
  only when the upload is completed (atomic), and an aborted write leaves nothing behind.
  Small blobs (under one part) are a single PUT.
- Reads stream (`open`, `read_range` with an HTTP Range request); `path` downloads a blob
  into the local `BlobCache` once and reuses it (workers on other machines need no shared
  filesystem: inputs are cached locally, results uploaded).
- A write can keep a copy in the cache on the way (`tee`): the API's upload checks then read
  the local copy instead of downloading what it just uploaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from core.blob_cache import BlobCache
from core.settings import Settings
from core.storage import READ_BYTES, BlobInfo, FileTooLarge, StorageError, check_key

MISSING = ("404", "NoSuchKey", "NotFound")
TEED = "files/"  # uploaded files: validated from a local copy right after the upload


class S3Writer:
    """Streams one blob into a multipart upload (see the module docstring)."""

    def __init__(self, store: S3Storage, key: str, max_bytes: int | None, tee: bool) -> None:
        self._store, self._key, self._max = store, key, max_bytes
        self._object = store.object_key(key)
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None
        self._hash = hashlib.sha256()
        self._tee: tuple[IO[bytes], Path] | None = store.cache.temp_file(key) if tee else None
        self._done = False
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._max is not None and self.size + len(chunk) > self._max:
            self.abort()
            raise FileTooLarge(self._max)
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._tee:
            self._tee[0].write(chunk)
        self._buf += chunk
        part = self._store.part_bytes
        while len(self._buf) >= part:
            self._send_part(bytes(self._buf[:part]))
            del self._buf[:part]

    def _send_part(self, data: bytes) -> None:
        s3, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = s3.create_multipart_upload(Bucket=bucket, Key=self._object)["UploadId"]
        number = len(self._parts) + 1
        got = s3.upload_part(Bucket=bucket, Key=self._object, UploadId=self._upload_id,
                             PartNumber=number, Body=data)  # fmt: skip
        self._parts.append({"PartNumber": number, "ETag": got["ETag"]})

    def commit(self) -> tuple[int, str]:
        """Completes the upload (the object appears now); returns (size, sha256 hex)."""
        s3, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                s3.put_object(Bucket=bucket, Key=self._object, Body=bytes(self._buf))
            else:
                if self._buf:
                    self._send_part(bytes(self._buf))
                s3.complete_multipart_upload(Bucket=bucket, Key=self._object, UploadId=self._upload_id,
                                             MultipartUpload={"Parts": self._parts})  # fmt: skip
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._buf.clear()
        if self._tee:
            self._tee[0].close()
            self._store.cache.commit(self._key, self._tee[1])
            self._tee = None
        return self.size, self._hash.hexdigest()

    def abort(self) -> None:
        if self._upload_id is not None and not self._done:
            with contextlib.suppress(ClientError):  # already gone
                self._store.client.abort_multipart_upload(
                    Bucket=self._store.bucket, Key=self._object, UploadId=self._upload_id
                )
            self._upload_id = None
        self._buf.clear()
        if self._tee:
            self._tee[0].close()
            self._tee[1].unlink(missing_ok=True)
            self._tee = None


class S3Storage:
    """Blobs as objects `<prefix><key>` in `bucket`; see the module docstring."""

    def __init__(self, client: Any, bucket: str, cache: BlobCache, *, prefix: str = "",
                 part_bytes: int = 16 * 1024**2) -> None:  # fmt: skip
        self.client, self.bucket, self.cache = client, bucket, cache
        self.prefix, self.part_bytes = prefix, part_bytes

    @classmethod
    def from_settings(cls, s: Settings) -> S3Storage:
        if not s.s3_bucket:
            raise StorageError("storage_backend is 's3' but CALM_S3_BUCKET is not set")
        secret = s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
        client = boto3.session.Session().client(
            "s3", endpoint_url=s.s3_endpoint_url, region_name=s.s3_region,
            aws_access_key_id=s.s3_access_key_id, aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32,
                          s3={"addressing_style": "path"}),
        )  # fmt: skip
        store = cls(client, s.s3_bucket, BlobCache(s.storage_cache_dir, s.storage_cache_max_bytes),
                    prefix=s.s3_prefix, part_bytes=s.s3_part_bytes)  # fmt: skip
        if s.s3_create_bucket:
            store.ensure_bucket()
        return store

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}{key}"

    # -- writing --------------------------------------------------------------------------------
    def writer(self, key: str, max_bytes: int | None = None, *, tee: bool | None = None) -> S3Writer:
        """A streaming writer; `tee` (default: for keys under files/, which the upload checks
        read right after) keeps a local copy in the cache too."""
        return S3Writer(self, key, max_bytes, key.startswith(TEED) if tee is None else tee)

    def write_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int | None = None,
                     *, tee: bool | None = None) -> tuple[int, str]:  # fmt: skip
        w = self.writer(key, max_bytes, tee=tee)
        try:
            for chunk in chunks:
                w.write(chunk)
            return w.commit()
        except BaseException:
            w.abort()
            raise

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        """Uploads the local file (streamed in parts) and removes it; returns (size, sha256)."""
        with open(path, "rb") as f:
            got = self.write_stream(key, iter(lambda: f.read(READ_BYTES), b""), tee=False)
        Path(path).unlink(missing_ok=True)
        return got

    def staging_dir(self) -> Path:
        d = self.cache.root / "staging"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- reading --------------------------------------------------------------------------------
    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in MISSING:
                return None
            raise

    def _get(self, key: str, **kw: Any) -> Any:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key), **kw)["Body"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in MISSING:
                raise FileNotFoundError(key) from None
            raise

    def open(self, key: str) -> BinaryIO:
        return self._get(key)

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes start..end (inclusive), one ranged GET, streamed."""
        body = self._get(key, Range=f"bytes={start}-{end}")
        try:
            yield from body.iter_chunks(READ_BYTES)
        finally:
            body.close()

    def local_file(self, key: str) -> Path | None:
        return None  # served by streaming, not from a local file

    def path(self, key: str) -> Path:
        """A local file with the blob's bytes: the cached copy, downloaded first if needed."""
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        size = int(head["ContentLength"])
        if (hit := self.cache.get(key, size)) is not None:
            return hit
        f, tmp = self.cache.temp_file(key)
        try:
            with f:
                body = self._get(key)
                shutil.copyfileobj(body, f, READ_BYTES)
            return self.cache.commit(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise FileNotFoundError(key)
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def list(self, prefix: str) -> list[BlobInfo]:
        """Every object under the folder `prefix`."""
        out = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.object_key(prefix).rstrip("/") + "/"
        )
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"][len(self.prefix):]
                out.append(BlobInfo(key, int(obj["Size"]), obj["LastModified"].timestamp()))
        return out

    def delete(self, key: str) -> None:
        """Removes `key`, or every object under the folder `key`; no error if absent."""
        keys = [b.key for b in self.list(key)]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self.object_key(k)} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        self.cache.discard(key)
        self.cache.discard_prefix(key)
