//! One object upload: buffered up to a part size, then a multipart upload
//! with a bounded number of parts in flight. Every byte passes through a
//! SHA-256 hasher and a counter on the way.
//!
//! ```text
//!  put(bytes) ──► buffer < part ──────────────► finish: single put (create-only)
//!                    │ ≥ part
//!                    ▼
//!           put_multipart ──► parts in flight (≤ MAX_PARTS_IN_FLIGHT)
//!                                  │
//!                   finish: last part, wait, complete
//!                   any failure: abort (no partial object is left)
//! ```
//!
//! Unlike `object_store::buffered::BufWriter`, every failure path aborts the
//! multipart upload (a failed part leaves BufWriter's upload dangling), and
//! errors keep the operation and key.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutPayloadMut,
};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::error::SinkError;

/// Parts uploaded concurrently per file: with the part being filled, each
/// open file holds at most `(MAX_PARTS_IN_FLIGHT + 1) × part size`.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// The size and checksum of a finished upload.
#[derive(Debug)]
pub(crate) struct UploadedObject {
    pub(crate) bytes: u64,
    /// `sha256:` and the lowercase hex digest of the object's bytes.
    pub(crate) checksum: String,
}

enum State {
    Buffer(PutPayloadMut),
    Multipart {
        upload: Box<dyn MultipartUpload>,
        in_flight: JoinSet<object_store::Result<()>>,
        buffer: PutPayloadMut,
    },
}

/// An object being written; finish it with [`Upload::finish`] or drop it
/// with [`Upload::abort`].
pub(crate) struct Upload {
    store: Arc<dyn ObjectStore>,
    path: Path,
    part_bytes: usize,
    state: State,
    hasher: Sha256,
    bytes: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("path", &self.path)
            .field("part_bytes", &self.part_bytes)
            .field("multipart", &matches!(self.state, State::Multipart { .. }))
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl Upload {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, path: Path, part_bytes: usize) -> Self {
        Self {
            store,
            path,
            part_bytes,
            state: State::Buffer(PutPayloadMut::new()),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes accepted so far (buffered or uploaded).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Append `data`; uploads a part when one is full. On error the caller
    /// must still call [`Upload::abort`].
    pub(crate) async fn put(&mut self, data: Bytes) -> Result<(), SinkError> {
        if data.is_empty() {
            return Ok(());
        }
        self.hasher.update(&data);
        self.bytes += data.len() as u64;
        match &mut self.state {
            State::Buffer(buffer) => {
                buffer.push(data);
                if buffer.content_length() >= self.part_bytes {
                    let first_part = std::mem::take(buffer).freeze();
                    let upload = self
                        .store
                        .put_multipart(&self.path)
                        .await
                        .map_err(|e| SinkError::object_store("put_multipart", &self.path, e))?;
                    self.state = State::Multipart {
                        upload,
                        in_flight: JoinSet::new(),
                        buffer: PutPayloadMut::new(),
                    };
                    self.send_part(first_part).await?;
                }
            }
            State::Multipart { buffer, .. } => {
                buffer.push(data);
                if buffer.content_length() >= self.part_bytes {
                    let part = std::mem::take(buffer).freeze();
                    self.send_part(part).await?;
                }
            }
        }
        Ok(())
    }

    /// Start uploading one part, first waiting while too many are in flight.
    async fn send_part(&mut self, part: PutPayload) -> Result<(), SinkError> {
        let State::Multipart {
            upload, in_flight, ..
        } = &mut self.state
        else {
            return Err(SinkError::Internal(
                "a part was sent before the multipart upload started".to_owned(),
            ));
        };
        while in_flight.len() >= MAX_PARTS_IN_FLIGHT {
            join_one(in_flight, &self.path).await?;
        }
        // `put_part` fixes the part number now, so parts may finish in any
        // order.
        in_flight.spawn(upload.put_part(part));
        Ok(())
    }

    /// Upload what is left and make the object visible. On failure the
    /// upload is aborted before the error is returned.
    pub(crate) async fn finish(mut self) -> Result<UploadedObject, SinkError> {
        let result = self.finish_inner().await;
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    async fn finish_inner(&mut self) -> Result<UploadedObject, SinkError> {
        match &mut self.state {
            State::Buffer(buffer) => {
                let payload = std::mem::take(buffer).freeze();
                // Names carry the run id and are never reused, so an
                // overwrite can only be this upload's own retry: a put whose
                // reply was lost is then retried instead of failing with
                // `AlreadyExists` (create-only would make it not idempotent).
                let options = PutOptions {
                    mode: PutMode::Overwrite,
                    ..PutOptions::default()
                };
                self.store
                    .put_opts(&self.path, payload, options)
                    .await
                    .map_err(|e| SinkError::object_store("put", &self.path, e))?;
            }
            State::Multipart { buffer, .. } => {
                if buffer.content_length() > 0 {
                    let part = std::mem::take(buffer).freeze();
                    self.send_part(part).await?;
                }
                let State::Multipart {
                    upload, in_flight, ..
                } = &mut self.state
                else {
                    return Err(SinkError::Internal("upload state changed".to_owned()));
                };
                while !in_flight.is_empty() {
                    join_one(in_flight, &self.path).await?;
                }
                // Every part is uploaded (on a local folder: in the staging
                // file `<name>#<n>`), the object is not visible yet.
                crate::faults::kill_point("before_complete");
                upload
                    .complete()
                    .await
                    .map_err(|e| SinkError::object_store("complete_multipart", &self.path, e))?;
            }
        }
        let digest = std::mem::take(&mut self.hasher).finalize();
        let mut checksum = String::with_capacity(7 + 2 * digest.len());
        checksum.push_str("sha256:");
        for byte in digest.iter() {
            checksum.push_str(&format!("{byte:02x}"));
        }
        Ok(UploadedObject {
            bytes: self.bytes,
            checksum,
        })
    }

    /// Cancel the upload, best effort: stops parts in flight and aborts the
    /// multipart upload, so no object appears. A failed abort is logged
    /// (S3 lifecycle rules reclaim such parts), never returned, so the
    /// original error is what the caller sees.
    pub(crate) async fn abort(mut self) {
        if let State::Multipart {
            upload, in_flight, ..
        } = &mut self.state
        {
            in_flight.shutdown().await;
            if let Err(error) = upload.abort().await {
                tracing::warn!(key = %self.path, %error, "cannot abort a multipart upload");
            }
        }
    }
}

async fn join_one(
    in_flight: &mut JoinSet<object_store::Result<()>>,
    path: &Path,
) -> Result<(), SinkError> {
    match in_flight.join_next().await {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(SinkError::object_store("upload_part", path, e)),
        Some(Err(join)) => Err(SinkError::object_store(
            "upload_part",
            path,
            object_store::Error::JoinError { source: join },
        )),
    }
}
