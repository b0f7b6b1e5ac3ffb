//! Amazon S3 (or an S3-compatible server) behind the [`BlobStore`] trait.
//!
//! Reads stream the object's body. Writes collect up to one part (8 MiB,
//! reserved from the message's buffer budget): an object that fits goes up
//! in one PutObject at `finish`; a larger one becomes a multipart upload
//! whose parts go up as they fill, completed at `finish` and aborted on any
//! failure or when the writer is dropped, so nothing partial is ever
//! visible. Unless replacing is granted, the PutObject or the completion
//! carries `If-None-Match: *`, so S3 itself refuses to replace an object;
//! each object records the message that wrote it (metadata `wasq-owner`),
//! so a redelivered message recognises its own output. Links are presigned
//! GETs.

use super::{
    BlobError, BlobReader, BlobStore, BlobUri, BlobWriter, Budget, CreateOptions, ObjectInfo,
    Reservation,
};
use crate::aws::{AwsOptions, Failure, classify};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use std::time::Duration;

/// The size of each part of a multipart upload but the last; S3 needs at
/// least 5 MiB.
pub const PART_SIZE: usize = 8 << 20;
/// The metadata naming the message that wrote an object.
const OWNER_METADATA: &str = "wasq-owner";

/// Objects in S3 buckets.
#[derive(Clone, Debug)]
pub struct S3Blobs {
    client: Client,
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
            .build();
        S3Blobs {
            client: Client::from_conf(config),
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

    async fn open(
        &self,
        uri: &BlobUri,
        _budget: &Budget,
    ) -> Result<Box<dyn BlobReader>, BlobError> {
        let out = self
            .client
            .get_object()
            .bucket(uri.bucket())
            .key(uri.key())
            .send()
            .await
            .map_err(|err| error(uri, &err))?;
        Ok(Box::new(S3Reader {
            uri: uri.clone(),
            body: out.body,
            pending: Bytes::new(),
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
            buffer: Vec::new(),
            upload: None,
            size: 0,
            _reservation: reservation,
        }))
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

struct S3Reader {
    uri: BlobUri,
    body: ByteStream,
    /// What the last chunk had beyond the last read's `max`.
    pending: Bytes,
}

#[async_trait]
impl BlobReader for S3Reader {
    async fn read(&mut self, max: usize) -> Result<Vec<u8>, BlobError> {
        if self.pending.is_empty() {
            match self.body.next().await {
                Some(Ok(chunk)) => self.pending = chunk,
                Some(Err(err)) => {
                    return Err(BlobError::Unavailable(format!(
                        "`{}`: reading the object: {err}",
                        self.uri
                    )));
                }
                None => return Ok(Vec::new()),
            }
        }
        let take = max.min(self.pending.len());
        Ok(self.pending.split_to(take).to_vec())
    }
}

/// A multipart upload in progress.
struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
    /// Set once completed; an upload dropped without it is aborted.
    done: bool,
}

struct S3Writer {
    store: S3Blobs,
    uri: BlobUri,
    content_type: Option<String>,
    overwrite: bool,
    owner: String,
    buffer: Vec<u8>,
    upload: Option<Upload>,
    size: u64,
    /// The part buffer's share of the message's budget.
    _reservation: Reservation,
}

impl S3Writer {
    /// Uploads the buffer as the next part, starting the upload if needed.
    async fn flush_part(&mut self) -> Result<(), BlobError> {
        if self.upload.is_none() {
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
            let id = out.upload_id().unwrap_or_default().to_string();
            self.upload = Some(Upload {
                id,
                parts: Vec::new(),
                done: false,
            });
        }
        let upload = self.upload.as_mut().expect("started above");
        let number = upload.parts.len() as i32 + 1;
        let body = std::mem::take(&mut self.buffer);
        let out = self
            .store
            .client
            .upload_part()
            .bucket(self.uri.bucket())
            .key(self.uri.key())
            .upload_id(&upload.id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| error(&self.uri, &err))?;
        upload.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build(),
        );
        Ok(())
    }

    /// Completes the multipart upload; `Ok(None)` when S3 refused because
    /// an object is already there.
    async fn finish_upload(&mut self) -> Result<Option<Option<String>>, BlobError> {
        if !self.buffer.is_empty() || self.upload.as_ref().is_some_and(|u| u.parts.is_empty()) {
            self.flush_part().await?;
        }
        let upload = self.upload.as_mut().expect("a multipart upload is open");
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

#[async_trait]
impl BlobWriter for S3Writer {
    async fn write(&mut self, chunk: Vec<u8>) -> Result<(), BlobError> {
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

    async fn finish(mut self: Box<Self>) -> Result<ObjectInfo, BlobError> {
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
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(uri = %self.uri, upload = %upload.id, "no runtime to abort the multipart upload; a bucket lifecycle rule will have to");
            return;
        };
        let client = self.store.client.clone();
        let uri = self.uri.clone();
        runtime.spawn(async move {
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
        });
    }
}
