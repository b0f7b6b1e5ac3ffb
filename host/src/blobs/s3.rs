//! Amazon S3 (or an S3-compatible server) behind the [`BlobStore`] trait.
//!
//! Every request waits a round trip for its first byte, so reads and writes
//! keep several going at once, within the message's buffer budget:
//!
//! - `open` asks for the object's first 2 MiB. From the first read on, the
//!   rest of a larger object is fetched as ranged GETs of 2 MiB, up to 16 in
//!   flight ahead of the reader, each range's buffer reserved from the
//!   budget (reading may hold at most half of it); when the budget has no
//!   room, the next range streams on its own and ranges ahead are tried
//!   again after it. The window starts at one range and doubles with each
//!   range read, so a reader read a little and dropped costs one GET ahead;
//!   a range that comes back short or long is an error, never a gap. Ranges after the first name the object's ETag, so an
//!   object replaced while it is read fails instead of mixing versions.
//! - Writes collect one part (5 MiB, reserved at `create`): an object that
//!   fits goes up in one PutObject at `finish`; a larger one becomes a
//!   multipart upload whose parts go up concurrently, up to 8 at once,
//!   while the processor keeps writing, each part in flight reserved from
//!   the budget (uploads may hold at most half of it); completed at
//!   `finish`, and aborted on any failure or when the writer is dropped, so
//!   nothing partial is ever visible. Parts of 5 MiB bound an object at
//!   10,000 parts, about 48 GiB.
//! - A stretch of another object appended whole (`copy_in`, for entries a
//!   processor stores unchanged) is copied inside S3 with `UploadPartCopy`
//!   in parts of up to 256 MiB, after the bytes buffered are topped up to a
//!   part from the source: the bytes never pass through the host. Each
//!   copy names the source's ETag, so a replaced source fails the copy.
//! - Requests are retried in the SDK's adaptive mode, which backs off and
//!   slows its own rate when S3 answers `503 SlowDown`.
//!
//! Unless replacing is granted, the PutObject or the completion carries
//! `If-None-Match: *`, so S3 itself refuses to replace an object; each
//! object records the message that wrote it (metadata `wasq-owner`), so a
//! redelivered message recognises its own output. Links are presigned GETs.

use super::{
    BlobError, BlobReader, BlobStore, BlobUri, BlobWriter, Budget, Checksum, CreateOptions,
    ObjectInfo, Reservation,
};
use crate::aws::{AwsOptions, Failure, classify};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType, CompletedMultipartUpload, CompletedPart};
use base64::Engine as _;
use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::time::Duration;

/// The size of each part of a multipart upload but the last; S3 needs at
/// least 5 MiB.
pub const PART_SIZE: usize = 5 << 20;
/// The size of each ranged GET of a large object.
pub const RANGE_SIZE: u64 = 2 << 20;
/// Ranged GETs one reader keeps in flight at most.
const READ_WINDOW: usize = 16;
/// Parts one writer keeps uploading at once at most.
const UPLOAD_WINDOW: usize = 8;
/// The most one `UploadPartCopy` copies. Copies run inside the store, so
/// parallel parts buy little: SeaweedFS copied two 256 MiB objects in 2.2 s
/// as one part each, and in 7.7–9.8 s as eight 32 MiB parts each (the
/// latency benchmark).
const COPY_PART_SIZE: u64 = 256 << 20;
/// The most parts a multipart upload may have.
const MAX_PARTS: u64 = 10_000;
/// Attempts per request in the adaptive retry mode.
const MAX_ATTEMPTS: u32 = 5;
/// The metadata naming the message that wrote an object.
const OWNER_METADATA: &str = "wasq-owner";

/// Objects in S3 buckets.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: Client,
    /// Aborts of multipart uploads whose writer was dropped, still under
    /// way.
    aborts: tokio_util::task::TaskTracker,
}

fn error<E>(uri: &BlobUri, err: &SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    error_about(&format!("`{uri}`"), err)
}

/// An SDK error as a blob error whose message starts with `what`.
fn error_about<E>(what: &str, err: &SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match classify(what, err) {
        Failure::Missing(text) => BlobError::NotFound(text),
        Failure::Denied(text) => BlobError::Denied(text),
        Failure::Invalid(text) => BlobError::Invalid(text),
        Failure::Unavailable(text) => BlobError::Unavailable(text),
    }
}

impl S3Blobs {
    pub async fn connect(options: &AwsOptions) -> Self {
        S3Blobs::new(&options.load().await, options.s3_path_style)
    }

    pub fn new(config: &aws_config::SdkConfig, path_style: bool) -> Self {
        let config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .retry_config(
                aws_sdk_s3::config::retry::RetryConfig::adaptive().with_max_attempts(MAX_ATTEMPTS),
            )
            .build();
        S3Blobs {
            client: Client::from_conf(config),
            aborts: Default::default(),
        }
    }

    /// What S3 knows of an object, and the message that wrote it.
    async fn head(&self, uri: &BlobUri) -> Result<(ObjectInfo, Option<String>), BlobError> {
        let out = self
            .client
            .head_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
            .map_err(|err| error(uri, &err))?;
        let owner = out.metadata().and_then(|m| m.get(OWNER_METADATA)).cloned();
        let info = ObjectInfo {
            uri: uri.clone(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            content_type: out.content_type().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
        };
        Ok((info, owner))
    }

    /// After S3 refused to replace an object: the object, if this message
    /// wrote it (its output from an earlier delivery), else `denied`.
    async fn own_existing(&self, uri: &BlobUri, owner: &str) -> Result<ObjectInfo, BlobError> {
        match self.head(uri).await? {
            (info, Some(found)) if found == owner => {
                tracing::debug!(%uri, "the object is this message's output from an earlier delivery; keeping it");
                Ok(info)
            }
            _ => Err(exists(uri)),
        }
    }

    /// Checks that a bucket exists and these credentials reach it.
    pub async fn check_bucket(&self, bucket: &str) -> Result<(), BlobError> {
        self.client
            .head_bucket()
            .bucket(bucket)
            .send()
            .await
            .map_err(
                |err| match error_about(&format!("bucket `{bucket}`"), &err) {
                    BlobError::NotFound(_) => {
                        BlobError::NotFound(format!("bucket `{bucket}` does not exist"))
                    }
                    other => other,
                },
            )?;
        Ok(())
    }
}

/// The error for an object that exists and may not be replaced.
fn exists(uri: &BlobUri) -> BlobError {
    BlobError::Denied(format!(
        "`{uri}` already exists and was written by another message; this processor may not replace objects (its manifest can allow it with `overwrite = true` under [blobs])"
    ))
}

/// Whether S3 refused a conditional write because the object exists.
fn precondition_failed<E>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(err, SdkError::ServiceError(service) if service.raw().status().as_u16() == 412)
}

#[async_trait]
impl BlobStore for S3Blobs {
    async fn stat(&self, uri: &BlobUri) -> Result<ObjectInfo, BlobError> {
        Ok(self.head(uri).await?.0)
    }

    async fn delete(&self, uri: &BlobUri) -> Result<(), BlobError> {
        match self
            .client
            .delete_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if status(&err) == Some(404) => Ok(()),
            Err(err) => Err(error(uri, &err)),
        }
    }

    async fn open(&self, uri: &BlobUri, budget: &Budget) -> Result<Box<dyn BlobReader>, BlobError> {
        let first = self
            .client
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .range(format!("bytes=0-{}", RANGE_SIZE - 1))
            .send()
            .await;
        let out = match first {
            Ok(out) => out,
            // An empty object has no byte 0: ask for it whole.
            Err(err) if status(&err) == Some(416) => self
                .client
                .get_object()
                .bucket(uri.bucket())
                .key(uri.key())
                .send()
                .await
                .map_err(|err| error(uri, &err))?,
            Err(err) => return Err(error(uri, &err)),
        };
        let length = out.content_length().unwrap_or(0).max(0) as u64;
        // `bytes 0-8388607/268435456`: the whole object's size follows the
        // slash; a server that ignored the range sent it all.
        let size = out
            .content_range()
            .and_then(|range| range.rsplit('/').next())
            .and_then(|total| total.parse().ok())
            .unwrap_or(length);
        let info = ObjectInfo {
            uri: uri.clone(),
            size,
            content_type: out.content_type().map(str::to_string),
            etag: out.e_tag().map(str::to_string),
        };
        // Ranges ahead start at the first read, not here: a reader opened
        // ahead of its turn (a prefetch) must not take the budget the
        // reader being read needs.
        Ok(Box::new(S3Reader {
            store: self.clone(),
            budget: budget.clone(),
            info,
            body: Some(out.body),
            next_start: length,
            ranges: std::collections::VecDeque::new(),
            pending: Bytes::new(),
            _held: None,
            taken: 0,
        }))
    }

    async fn create(
        &self,
        uri: &BlobUri,
        options: CreateOptions<'_>,
    ) -> Result<Box<dyn BlobWriter>, BlobError> {
        // An object that may not be replaced is refused before the
        // processor spends its time writing; S3 checks again at the end.
        if !options.overwrite {
            match self.head(uri).await {
                Ok((_, owner)) if owner.as_deref() != Some(options.owner) => {
                    return Err(exists(uri));
                }
                // Without ListBucket a missing object reads as 403: the
                // condition on the write still decides.
                Ok(_) | Err(BlobError::NotFound(_)) | Err(BlobError::Denied(_)) => {}
                Err(err) => return Err(err),
            }
        }
        let reservation = options
            .budget
            .reserve(PART_SIZE as u64, &format!("`{uri}`"))?;
        let content_type = options.content_type.map(str::to_string).or_else(|| {
            mime_guess::from_path(uri.key())
                .first_raw()
                .map(str::to_string)
        });
        Ok(Box::new(S3Writer {
            store: self.clone(),
            uri: uri.clone(),
            content_type,
            overwrite: options.overwrite,
            owner: options.owner.to_string(),
            budget: options.budget.clone(),
            buffer: Vec::new(),
            upload: None,
            size: 0,
            failed: false,
            _reservation: reservation,
        }))
    }

    async fn settle(&self) {
        self.aborts.close();
        self.aborts.wait().await;
        self.aborts.reopen();
    }

    async fn presign_get(&self, uri: &BlobUri, expires_in: Duration) -> Result<String, BlobError> {
        super::check_link_lifetime(uri, expires_in)?;
        let config = PresigningConfig::expires_in(expires_in)
            .map_err(|err| BlobError::Invalid(format!("`{uri}`: {err}")))?;
        let request = self
            .client
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .presigned(config)
            .await
            .map_err(|err| error(uri, &err))?;
        Ok(request.uri().to_string())
    }
}

/// The HTTP status of a failed request, if it got an answer.
fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    match err {
        SdkError::ServiceError(service) => Some(service.raw().status().as_u16()),
        _ => None,
    }
}

type RangeTask = tokio::task::JoinHandle<Result<Bytes, BlobError>>;

struct S3Reader {
    store: S3Blobs,
    budget: Budget,
    info: ObjectInfo,
    /// The response being streamed: the first range, or the rest of the
    /// object when the budget had no room for ranges.
    body: Option<ByteStream>,
    /// Where the next range starts.
    next_start: u64,
    /// Ranges being fetched, in order, each with its buffer's reservation.
    ranges: std::collections::VecDeque<(RangeTask, Reservation)>,
    /// What the last chunk had beyond the last read's `max`.
    pending: Bytes,
    /// The reservation of the range `pending` came from.
    _held: Option<Reservation>,
    /// Ranges fetched ahead and read so far: the window ahead doubles with
    /// each, from one, so a reader read a little and dropped costs one
    /// range ahead, not a window of them.
    taken: u32,
}

impl S3Reader {
    /// Starts ranged GETs ahead of the reader while the window and the
    /// budget allow.
    fn top_up(&mut self) {
        let window = READ_WINDOW.min(1 << self.taken.min(READ_WINDOW.ilog2()));
        while self.ranges.len() < window && self.next_start < self.info.size {
            let end = (self.next_start + RANGE_SIZE).min(self.info.size) - 1;
            let Ok(reservation) = self
                .budget
                .reserve_for_reading(end - self.next_start + 1, &format!("`{}`", self.info.uri))
            else {
                break;
            };
            let client = self.store.client.clone();
            let uri = self.info.uri.clone();
            let etag = self.info.etag.clone();
            let range = format!("bytes={}-{end}", self.next_start);
            let expected = end - self.next_start + 1;
            let task = tokio::spawn(async move {
                let started = std::time::Instant::now();
                let out = client
                    .get_object()
                    .bucket(uri.bucket())
                    .key(uri.key())
                    .range(range.clone())
                    .set_if_match(etag)
                    .send()
                    .await
                    .map_err(|err| changed_or(&uri, &err))?;
                let bytes = out.body.collect().await.map_err(|err| {
                    BlobError::Unavailable(format!("`{uri}`: reading the object: {err}"))
                })?;
                let bytes = bytes.into_bytes();
                if bytes.len() as u64 != expected {
                    return Err(BlobError::Unavailable(format!(
                        "`{uri}`: the store sent {} bytes for {range}",
                        bytes.len()
                    )));
                }
                tracing::debug!(%uri, took = ?started.elapsed(), "range read ahead");
                Ok(bytes)
            });
            self.ranges.push_back((task, reservation));
            self.next_start = end + 1;
        }
    }

    /// The next range as a streamed GET, when the budget has no room to
    /// fetch it ahead: it needs no buffer of its own, and the next ranges
    /// are tried ahead again once it is read.
    async fn stream_next(&mut self) -> Result<(), BlobError> {
        let uri = &self.info.uri;
        tracing::debug!(%uri, at = self.next_start, "no budget to read ahead: streaming the next range");
        let end = (self.next_start + RANGE_SIZE).min(self.info.size) - 1;
        let out = self
            .store
            .client
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .range(format!("bytes={}-{end}", self.next_start))
            .set_if_match(self.info.etag.clone())
            .send()
            .await
            .map_err(|err| changed_or(uri, &err))?;
        self.body = Some(out.body);
        self.next_start = end + 1;
        Ok(())
    }
}

impl Drop for S3Reader {
    fn drop(&mut self) {
        for (task, _) in &self.ranges {
            task.abort();
        }
    }
}

#[async_trait]
impl BlobReader for S3Reader {
    fn info(&self) -> &ObjectInfo {
        &self.info
    }

    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        self.top_up();
        while self.pending.is_empty() {
            if let Some(body) = &mut self.body {
                match body.next().await {
                    Some(Ok(chunk)) => self.pending = chunk,
                    Some(Err(err)) => {
                        return Err(BlobError::Unavailable(format!(
                            "`{}`: reading the object: {err}",
                            self.info.uri
                        )));
                    }
                    None => self.body = None,
                }
                continue;
            }
            self.top_up();
            if let Some((task, reservation)) = self.ranges.pop_front() {
                self.pending = task.await.map_err(|err| {
                    BlobError::Unavailable(format!("`{}`: {err}", self.info.uri))
                })??;
                self._held = Some(reservation);
                self.taken = self.taken.saturating_add(1);
                self.top_up();
            } else if self.next_start < self.info.size {
                self.stream_next().await?;
            } else {
                return Ok(Vec::new());
            }
        }
        let take = max.min(self.pending.len());
        Ok(self.pending.split_to(take).to_vec())
    }

    async fn checksum(&self) -> Result<Option<Checksum>, BlobError> {
        let uri = &self.info.uri;
        // Without an ETag the checksum could be another version's.
        if self.info.etag.is_none() {
            return Ok(None);
        }
        let out = self
            .store
            .client
            .head_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .set_if_match(self.info.etag.clone())
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|err| changed_or(uri, &err))?;
        // A composite checksum (of the parts' checksums) is not the
        // object's CRC-32; it reads `BASE64-N` and is refused by the decode.
        if out
            .checksum_type()
            .is_some_and(|kind| *kind != ChecksumType::FullObject)
        {
            return Ok(None);
        }
        let crc32 = out
            .checksum_crc32()
            .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
            .and_then(|bytes| <[u8; 4]>::try_from(bytes.as_slice()).ok())
            .map(u32::from_be_bytes);
        let size = out.content_length().unwrap_or(-1);
        Ok(crc32
            .zip(u64::try_from(size).ok())
            .map(|(crc32, size)| Checksum { crc32, size }))
    }
}

type PartTask = tokio::task::JoinHandle<Result<CompletedPart, BlobError>>;

/// A multipart upload in progress.
struct Upload {
    id: String,
    /// Parts whose upload finished.
    parts: Vec<CompletedPart>,
    /// Parts going up, oldest first, each with its buffer's reservation.
    in_flight: std::collections::VecDeque<(PartTask, Option<Reservation>)>,
    /// The number the next part gets.
    next_number: i32,
    /// Set once completed; an upload dropped without it is aborted.
    done: bool,
}

impl Upload {
    /// The next part's number; S3 allows at most [`MAX_PARTS`].
    fn take_number(&mut self, uri: &BlobUri) -> Result<i32, BlobError> {
        let number = self.next_number;
        if u64::try_from(number).unwrap_or(u64::MAX) > MAX_PARTS {
            return Err(BlobError::Invalid(format!(
                "`{uri}` is too large: an upload has at most {MAX_PARTS} parts"
            )));
        }
        self.next_number += 1;
        Ok(number)
    }
}

struct S3Writer {
    store: S3Blobs,
    uri: BlobUri,
    content_type: Option<String>,
    overwrite: bool,
    owner: String,
    budget: Budget,
    buffer: Vec<u8>,
    upload: Option<Upload>,
    size: u64,
    /// Set once a call failed: every later one is refused, so an object
    /// with a part missing is never completed.
    failed: bool,
    /// The part buffer's share of the message's budget.
    _reservation: Reservation,
}

impl S3Writer {
    /// Starts the multipart upload, unless it is under way.
    async fn start_upload(&mut self) -> Result<(), BlobError> {
        if self.upload.is_some() {
            return Ok(());
        }
        let out = self
            .store
            .client
            .create_multipart_upload()
            .bucket(self.uri.bucket())
            .key(self.uri.key())
            .set_content_type(self.content_type.clone())
            .metadata(OWNER_METADATA, &self.owner)
            .send()
            .await
            .map_err(|err| error(&self.uri, &err))?;
        self.upload = Some(Upload {
            id: out.upload_id().unwrap_or_default().to_string(),
            parts: Vec::new(),
            in_flight: std::collections::VecDeque::new(),
            next_number: 1,
            done: false,
        });
        Ok(())
    }

    /// Sends the buffer as the next part, starting the upload if needed. The
    /// part goes up on its own while the processor writes on, as long as
    /// the budget holds its buffer; otherwise the oldest part is waited for
    /// first, and with none in flight this one is sent before returning.
    async fn flush_part(&mut self) -> Result<(), BlobError> {
        self.start_upload().await?;
        let what = format!("`{}`", self.uri);
        let reservation = loop {
            let upload = self.upload.as_mut().expect("started above");
            if upload.in_flight.len() < UPLOAD_WINDOW
                && let Ok(reservation) = self.budget.reserve_for_upload(PART_SIZE as u64, &what)
            {
                break Some(reservation);
            }
            match upload.in_flight.pop_front() {
                Some((task, _)) => {
                    let part = join_part(&self.uri, task).await?;
                    upload.parts.push(part);
                }
                // Nothing in flight and no room: this part goes up now,
                // in the buffer the writer already holds.
                None => {
                    tracing::debug!(uri = %self.uri, "no budget to upload ahead: sending the part now");
                    break None;
                }
            }
        };
        let upload = self.upload.as_mut().expect("started above");
        let number = upload.take_number(&self.uri)?;
        let body = std::mem::take(&mut self.buffer);
        let client = self.store.client.clone();
        let (uri, id) = (self.uri.clone(), upload.id.clone());
        let send = async move {
            let started = std::time::Instant::now();
            let out = client
                .upload_part()
                .bucket(uri.bucket())
                .key(uri.key())
                .upload_id(id)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|err| error(&uri, &err))?;
            tracing::debug!(%uri, part = number, took = ?started.elapsed(), "part sent");
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        };
        if reservation.is_some() {
            upload
                .in_flight
                .push_back((tokio::spawn(send), reservation));
        } else {
            let part = send.await?;
            upload.parts.push(part);
        }
        Ok(())
    }

    /// Completes the multipart upload; `Ok(None)` when S3 refused because
    /// an object is already there.
    async fn finish_upload(&mut self) -> Result<Option<Option<String>>, BlobError> {
        if !self.buffer.is_empty() || self.upload.as_ref().is_some_and(|u| u.next_number == 1) {
            self.flush_part().await?;
        }
        let upload = self.upload.as_mut().expect("a multipart upload is open");
        while let Some((task, _)) = upload.in_flight.pop_front() {
            let part = join_part(&self.uri, task).await?;
            upload.parts.push(part);
        }
        upload.parts.sort_by_key(|part| part.part_number());
        let numbered = upload
            .parts
            .iter()
            .map(|part| part.part_number())
            .eq((1..upload.next_number).map(Some));
        if !numbered {
            return Err(BlobError::Unavailable(format!(
                "`{}`: a part of the upload is missing; the object was discarded",
                self.uri
            )));
        }
        let completed = self
            .store
            .client
            .complete_multipart_upload()
            .bucket(self.uri.bucket())
            .key(self.uri.key())
            .upload_id(&upload.id)
            .set_if_none_match((!self.overwrite).then(|| "*".to_string()))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(upload.parts.clone()))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(out) => {
                upload.done = true;
                Ok(Some(out.e_tag().map(str::to_string)))
            }
            // The upload is aborted when the writer drops.
            Err(err) if precondition_failed(&err) => Ok(None),
            Err(err) => Err(error(&self.uri, &err)),
        }
    }
}

impl S3Writer {
    /// Fills the buffer to a whole part with `source`'s bytes from `offset`
    /// on, read with a ranged GET of that version.
    async fn fill_from(
        &mut self,
        source: &ObjectInfo,
        etag: &str,
        offset: u64,
    ) -> Result<(), BlobError> {
        let want = PART_SIZE - self.buffer.len();
        let uri = &source.uri;
        let out = self
            .store
            .client
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .range(format!("bytes={offset}-{}", offset + want as u64 - 1))
            .if_match(etag)
            .send()
            .await
            .map_err(|err| changed_or(uri, &err))?;
        let mut body = out.body;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| {
                BlobError::Unavailable(format!("`{uri}`: reading the object: {err}"))
            })?;
            if self.buffer.len() + chunk.len() > PART_SIZE {
                return Err(BlobError::Unavailable(format!(
                    "`{uri}`: the store sent more than the {want} bytes asked for"
                )));
            }
            self.buffer.extend_from_slice(&chunk);
        }
        if self.buffer.len() < PART_SIZE {
            return Err(BlobError::Unavailable(format!(
                "`{uri}`: the store sent fewer than the {want} bytes asked for"
            )));
        }
        Ok(())
    }

    /// Starts copying `source`'s bytes `start..end` into the next part,
    /// once the upload window has room (a copy holds no buffer here).
    async fn copy_part(
        &mut self,
        source: &ObjectInfo,
        etag: &str,
        start: u64,
        end: u64,
    ) -> Result<(), BlobError> {
        self.start_upload().await?;
        let upload = self.upload.as_mut().expect("started above");
        while upload.in_flight.len() >= UPLOAD_WINDOW {
            let (task, _) = upload.in_flight.pop_front().expect("the window is full");
            let part = join_part(&self.uri, task).await?;
            upload.parts.push(part);
        }
        let number = upload.take_number(&self.uri)?;
        let client = self.store.client.clone();
        let (uri, id) = (self.uri.clone(), upload.id.clone());
        let from = source.uri.clone();
        let copy_source = format!(
            "{}/{}",
            from.bucket(),
            utf8_percent_encode(from.key(), KEY_IN_COPY_SOURCE)
        );
        let etag = etag.to_string();
        let copy = async move {
            let started = std::time::Instant::now();
            let out = client
                .upload_part_copy()
                .bucket(uri.bucket())
                .key(uri.key())
                .upload_id(id)
                .part_number(number)
                .copy_source(copy_source)
                .copy_source_range(format!("bytes={start}-{}", end - 1))
                .copy_source_if_match(etag)
                .send()
                .await
                .map_err(|err| changed_or(&from, &err))?;
            tracing::debug!(%uri, part = number, source = %from, bytes = end - start, took = ?started.elapsed(), "part copied");
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(
                    out.copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_string),
                )
                .build())
        };
        upload.in_flight.push_back((tokio::spawn(copy), None));
        Ok(())
    }
}

/// The characters of a key escaped in `x-amz-copy-source`: all but letters,
/// digits, `/` and the unreserved marks.
const KEY_IN_COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A failed read of a source object: `412` means it was replaced since it
/// was opened.
fn changed_or<E>(uri: &BlobUri, err: &SdkError<E, HttpResponse>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match status(err) {
        Some(412) => BlobError::Unavailable(format!("`{uri}` changed while it was being read")),
        _ => error(uri, err),
    }
}

/// How `length` bytes copied inside the store are cut into parts: as few
/// as [`COPY_PART_SIZE`] allows, of even size, so none falls under S3's
/// 5 MiB minimum when `length` is at least that.
fn copy_cuts(length: u64) -> impl Iterator<Item = (u64, u64)> {
    let count = length.div_ceil(COPY_PART_SIZE).max(1);
    let each = length.div_ceil(count);
    (0..count).map(move |i| (i * each, ((i + 1) * each).min(length)))
}

/// The outcome of one part's upload task.
async fn join_part(uri: &BlobUri, task: PartTask) -> Result<CompletedPart, BlobError> {
    task.await
        .map_err(|err| BlobError::Unavailable(format!("`{uri}`: uploading a part: {err}")))?
}

impl S3Writer {
    async fn write_chunk(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
        self.size += chunk.len() as u64;
        // The buffer never holds more than one part, however large the
        // chunk: it is taken a part's worth at a time.
        let mut rest = chunk.as_slice();
        while !rest.is_empty() {
            let room = PART_SIZE - self.buffer.len();
            let (now, later) = rest.split_at(room.min(rest.len()));
            self.buffer.extend_from_slice(now);
            rest = later;
            if self.buffer.len() == PART_SIZE {
                self.flush_part().await?;
            }
        }
        Ok(())
    }

    async fn copy_stretch(
        &mut self,
        source: &ObjectInfo,
        offset: u64,
        length: u64,
    ) -> Result<bool, BlobError> {
        let Some(etag) = source.etag.clone() else {
            return Ok(false);
        };
        // The bytes buffered are topped up to a whole part from the source;
        // what follows is copied, in parts of at least 5 MiB.
        let top_up = match self.buffer.len() {
            0 => 0,
            held => (PART_SIZE - held) as u64,
        };
        let Some(copied) = length
            .checked_sub(top_up)
            .filter(|rest| *rest >= PART_SIZE as u64)
        else {
            return Ok(false);
        };
        let parts = copied.div_ceil(COPY_PART_SIZE) + u64::from(top_up > 0);
        let next = self.upload.as_ref().map_or(1, |u| u.next_number);
        // The last part is left for what follows (a zip's directory).
        if u64::try_from(next).unwrap_or(u64::MAX) + parts > MAX_PARTS {
            return Ok(false);
        }
        if top_up > 0 {
            self.fill_from(source, &etag, offset).await?;
            self.flush_part().await?;
        }
        let start = offset + top_up;
        for (from, to) in copy_cuts(copied) {
            self.copy_part(source, &etag, start + from, start + to)
                .await?;
        }
        self.size += length;
        Ok(true)
    }

    /// Refuses every call once a call has failed: a part may be missing.
    fn usable(&self) -> Result<(), BlobError> {
        if self.failed {
            return Err(BlobError::Unavailable(format!(
                "`{}`: an earlier write failed; the object was discarded",
                self.uri
            )));
        }
        Ok(())
    }

    /// Notes a failure: the writer is spent.
    fn spend_on<T>(&mut self, result: Result<T, BlobError>) -> Result<T, BlobError> {
        self.failed |= result.is_err();
        result
    }
}

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
        self.usable()?;
        let written = self.write_chunk(chunk).await;
        self.spend_on(written)
    }

    async fn copy_in(
        &mut self,
        source: &ObjectInfo,
        offset: u64,
        length: u64,
    ) -> Result<bool, BlobError> {
        self.usable()?;
        let copied = self.copy_stretch(source, offset, length).await;
        self.spend_on(copied)
    }

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
        self.usable()?;
        let written = if self.upload.is_some() {
            self.finish_upload().await?
        } else {
            let body = std::mem::take(&mut self.buffer);
            let put = self
                .store
                .client
                .put_object()
                .bucket(self.uri.bucket())
                .key(self.uri.key())
                .set_content_type(self.content_type.clone())
                .metadata(OWNER_METADATA, &self.owner)
                .set_if_none_match((!self.overwrite).then(|| "*".to_string()))
                .body(ByteStream::from(body))
                .send()
                .await;
            match put {
                Ok(out) => Some(out.e_tag().map(str::to_string)),
                Err(err) if precondition_failed(&err) => None,
                Err(err) => return Err(error(&self.uri, &err)),
            }
        };
        let Some(etag) = written else {
            return self.store.own_existing(&self.uri, &self.owner).await;
        };
        Ok(ObjectInfo {
            uri: self.uri.clone(),
            size: self.size,
            content_type: self.content_type.clone(),
            etag,
        })
    }
}

impl Drop for S3Writer {
    /// An upload not completed is aborted, so its parts neither show nor
    /// linger (and cost) in the bucket.
    fn drop(&mut self) {
        let Some(upload) = self.upload.take().filter(|u| !u.done) else {
            return;
        };
        for (task, _) in &upload.in_flight {
            task.abort();
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(uri = %self.uri, upload = %upload.id, "no runtime to abort the multipart upload; a bucket lifecycle rule will have to");
            return;
        };
        let client = self.store.client.clone();
        let uri = self.uri.clone();
        let aborting = async move {
            let aborted = client
                .abort_multipart_upload()
                .bucket(uri.bucket())
                .key(uri.key())
                .upload_id(&upload.id)
                .send()
                .await;
            if let Err(err) = aborted {
                tracing::warn!(%uri, upload = %upload.id, error = %error(&uri, &err), "could not abort the multipart upload");
            }
        };
        self.store.aborts.spawn_on(aborting, &runtime);
    }
}
