//! The `blobs` interface: URIs checked, handles bounded, bytes counted
//! against the plugin's limits, then handed to the configured store.

use super::HostBlobError;
use crate::blobs::{BlobError, BlobReader, BlobUri, BlobWriter, CreateOptions, ObjectInfo};
use crate::runtime::bindings::blobs as wit;
use crate::runtime::deflate::Deflation;
use crate::runtime::state::{Fault, HostState};
use std::time::Duration;
use wasmtime::component::Resource;

/// Readers and writers one message may hold open at once.
pub const MAX_OPEN_HANDLES: usize = 64;
/// The most one `read` returns, whatever the processor asks for, so a
/// processor cannot make the host allocate without bound.
pub const MAX_READ_CHUNK: usize = 8 << 20;

/// A reader as the resource table holds it, with how much was read.
pub struct ReaderHandle {
    reader: Box<dyn BlobReader>,
    read: u64,
}

/// A stream being deflated by the host, as the resource table holds it.
pub struct DeflatedHandle(Deflation);

/// A writer as the resource table holds it; `None` once finished.
pub struct WriterHandle {
    uri: BlobUri,
    writer: Option<Box<dyn BlobWriter>>,
}

fn info(object: ObjectInfo) -> wit::ObjectInfo {
    wit::ObjectInfo {
        uri: object.uri.to_string(),
        size: object.size,
        content_type: object.content_type,
        etag: object.etag,
    }
}

fn object_checksum(sum: crate::blobs::Checksum) -> wit::ObjectChecksum {
    wit::ObjectChecksum {
        crc32: sum.crc32,
        size: sum.size,
    }
}

impl HostState {
    fn take_handle(&mut self) -> Result<(), HostBlobError> {
        if self.open_handles >= MAX_OPEN_HANDLES {
            return Err(BlobError::Denied(format!(
                "at most {MAX_OPEN_HANDLES} readers and writers may be open at once"
            ))
            .into());
        }
        self.open_handles += 1;
        Ok(())
    }

    fn release_handle(&mut self) {
        self.open_handles = self.open_handles.saturating_sub(1);
    }

    /// Puts what a taken handle place was for in the resource table, or
    /// gives the place back if there is nothing to put or no room.
    fn keep<T: Send + 'static>(
        &mut self,
        made: Result<T, HostBlobError>,
    ) -> Result<Resource<T>, HostBlobError> {
        let pushed = made.and_then(|made| Ok(self.table.push(made)?));
        if pushed.is_err() {
            self.release_handle();
        }
        pushed
    }
}

impl wit::Host for HostState {
    async fn stat(&mut self, uri: String) -> Result<wit::ObjectInfo, HostBlobError> {
        let uri = BlobUri::parse(&uri)?;
        self.grants.check_read(&uri)?;
        // An object opened ahead already knows itself.
        if let Some(known) = self.prefetch.info(&uri).await {
            return Ok(info(known?));
        }
        Ok(info(self.services.blobs.stat(&uri).await?))
    }

    async fn open(&mut self, uri: String) -> Result<Resource<ReaderHandle>, HostBlobError> {
        let uri = BlobUri::parse(&uri)?;
        self.grants.check_read(&uri)?;
        self.take_handle()?;
        let ahead = self
            .prefetch
            .take(&uri, &self.services.blobs, &self.budget)
            .await;
        let opened = match ahead {
            Some(opened) => opened,
            None => self.services.blobs.open(&uri, &self.budget).await,
        };
        self.keep(
            opened
                .map(|reader| ReaderHandle { reader, read: 0 })
                .map_err(HostBlobError::from),
        )
    }

    async fn create(
        &mut self,
        uri: String,
        content_type: Option<String>,
    ) -> Result<Resource<WriterHandle>, HostBlobError> {
        let uri = BlobUri::parse(&uri)?;
        self.grants.check_write(&uri)?;
        self.take_handle()?;
        let options = CreateOptions {
            content_type: content_type.as_deref(),
            overwrite: self.grants.overwrite,
            owner: &self.owner,
            budget: &self.budget,
        };
        let created = self.services.blobs.create(&uri, options).await;
        self.keep(
            created
                .map(|writer| WriterHandle {
                    uri,
                    writer: Some(writer),
                })
                .map_err(HostBlobError::from),
        )
    }

    async fn presign_get(
        &mut self,
        uri: String,
        expires_in_secs: u32,
    ) -> Result<String, HostBlobError> {
        let uri = BlobUri::parse(&uri)?;
        // An object this message wrote may be signed without a read grant:
        // making a link to one's own output is what a writer is for.
        if !self.written.contains(&uri) {
            self.grants.check_read(&uri)?;
        }
        let expires_in = Duration::from_secs(u64::from(expires_in_secs));
        Ok(self.services.blobs.presign_get(&uri, expires_in).await?)
    }

    async fn prefetch(&mut self, uris: Vec<String>) -> wasmtime::Result<()> {
        // Invalid or ungranted URIs are skipped: `stat` and `open` report
        // them as they always do. Past the room the hints have, the rest is
        // not parsed (the list itself was copied, within MAX_CALL_BYTES).
        if !self.prefetch.has_room() {
            return Ok(());
        }
        let grants = &self.grants;
        let granted = uris
            .iter()
            .filter_map(|uri| BlobUri::parse(uri).ok())
            .filter(|uri| grants.check_read(uri).is_ok());
        self.prefetch
            .hint(granted, &self.services.blobs, &self.budget);
        Ok(())
    }

    async fn deflate(
        &mut self,
        source: Resource<ReaderHandle>,
        level: u8,
    ) -> Result<Resource<DeflatedHandle>, HostBlobError> {
        // The reader is taken whatever happens, as the signature says; its
        // handle's place passes to the stream, or is given back.
        let ReaderHandle { reader, read } = self.table.delete(source)?;
        let level = match crate::runtime::deflate::level(level) {
            Ok(level) => level,
            Err(err) => {
                self.release_handle();
                return Err(err.into());
            }
        };
        // Everything still to read counts now, as if read: the stream
        // reads it on the processor's behalf.
        let rest = reader.info().size.saturating_sub(read);
        let limit = self.limits.bytes_read;
        if self.usage.bytes_read.saturating_add(rest) > limit {
            self.release_handle();
            return Err(self.exceed(Fault::BytesRead(limit)).into());
        }
        self.usage.bytes_read += rest;
        let deflation = Deflation::start(
            reader,
            rest,
            level,
            self.budget.clone(),
            self.deflating.get_or_insert_with(Default::default).clone(),
        );
        self.keep(Ok(DeflatedHandle(deflation)))
    }

    fn convert_error(&mut self, err: HostBlobError) -> wasmtime::Result<wit::Error> {
        match err {
            HostBlobError::Blob(BlobError::NotFound(m)) => Ok(wit::Error::NotFound(m)),
            HostBlobError::Blob(BlobError::Denied(m)) => Ok(wit::Error::Denied(m)),
            HostBlobError::Blob(BlobError::Invalid(m)) => Ok(wit::Error::Invalid(m)),
            HostBlobError::Blob(BlobError::Unavailable(m)) => Ok(wit::Error::Unavailable(m)),
            HostBlobError::Trap(trap) => Err(trap),
        }
    }
}

impl wit::HostReader for HostState {
    async fn read(
        &mut self,
        reader: Resource<ReaderHandle>,
        max: u32,
    ) -> Result<Vec<u8>, HostBlobError> {
        let limit = self.limits.bytes_read;
        // Never read past the limit plus one byte: one byte over is enough to
        // know the limit was exceeded.
        let allowance = limit
            .saturating_sub(self.usage.bytes_read)
            .saturating_add(1);
        let want = (max as usize)
            .min(MAX_READ_CHUNK)
            .min(usize::try_from(allowance).unwrap_or(usize::MAX));
        let handle = self.table.get_mut(&reader)?;
        let chunk = handle.reader.read(want).await?;
        handle.read += chunk.len() as u64;
        self.usage.bytes_read += chunk.len() as u64;
        if self.usage.bytes_read > limit {
            return Err(self.exceed(Fault::BytesRead(limit)).into());
        }
        Ok(chunk)
    }

    async fn checksum(
        &mut self,
        reader: Resource<ReaderHandle>,
    ) -> Result<Option<wit::ObjectChecksum>, HostBlobError> {
        let checksum = self.table.get(&reader)?.reader.checksum().await?;
        Ok(checksum.map(object_checksum))
    }

    async fn drop(&mut self, reader: Resource<ReaderHandle>) -> wasmtime::Result<()> {
        self.table.delete(reader)?;
        self.release_handle();
        Ok(())
    }
}

impl wit::HostWriter for HostState {
    async fn write(
        &mut self,
        writer: Resource<WriterHandle>,
        chunk: Vec<u8>,
    ) -> Result<(), HostBlobError> {
        let limit = self.limits.bytes_written;
        if self.usage.bytes_written + chunk.len() as u64 > limit {
            return Err(self.exceed(Fault::BytesWritten(limit)).into());
        }
        let len = chunk.len() as u64;
        let handle = self.table.get_mut(&writer)?;
        let Some(inner) = handle.writer.as_mut() else {
            return Err(BlobError::Invalid(format!(
                "`{}`: the writer is finished, or spent by an earlier failure",
                handle.uri
            ))
            .into());
        };
        if let Err(err) = inner.write(chunk).await {
            // The object may be missing bytes: the writer is spent, and
            // dropping it discards the object.
            handle.writer = None;
            return Err(err.into());
        }
        self.usage.bytes_written += len;
        Ok(())
    }

    async fn append_from(
        &mut self,
        writer: Resource<WriterHandle>,
        source: Resource<ReaderHandle>,
        offset: u64,
        length: u64,
    ) -> Result<bool, HostBlobError> {
        let object = self.table.get(&source)?.reader.info().clone();
        if offset
            .checked_add(length)
            .is_none_or(|end| end > object.size)
        {
            return Err(BlobError::Invalid(format!(
                "`{}` holds {} bytes: {length} bytes from byte {offset} are not all there",
                object.uri, object.size
            ))
            .into());
        }
        let limit = self.limits.bytes_written;
        if self.usage.bytes_written.saturating_add(length) > limit {
            return Err(self.exceed(Fault::BytesWritten(limit)).into());
        }
        let handle = self.table.get_mut(&writer)?;
        let Some(inner) = handle.writer.as_mut() else {
            return Err(BlobError::Invalid(format!(
                "`{}`: the writer is finished, or spent by an earlier failure",
                handle.uri
            ))
            .into());
        };
        match inner.copy_in(&object, offset, length).await {
            Ok(copied) => {
                if copied {
                    self.usage.bytes_written += length;
                }
                Ok(copied)
            }
            Err(err) => {
                // Part of the stretch may be in the upload: the writer is
                // spent, and dropping it discards the upload.
                handle.writer = None;
                Err(err.into())
            }
        }
    }

    async fn finish(
        &mut self,
        writer: Resource<WriterHandle>,
    ) -> Result<wit::ObjectInfo, HostBlobError> {
        let handle = self.table.get_mut(&writer)?;
        let Some(inner) = handle.writer.take() else {
            return Err(BlobError::Invalid(format!(
                "`{}`: the writer is finished, or spent by an earlier failure",
                handle.uri
            ))
            .into());
        };
        let uri = handle.uri.clone();
        let object = inner.finish().await?;
        self.written.insert(uri);
        Ok(info(object))
    }

    async fn drop(&mut self, writer: Resource<WriterHandle>) -> wasmtime::Result<()> {
        // An unfinished writer is discarded by its own drop.
        self.table.delete(writer)?;
        self.release_handle();
        Ok(())
    }
}

impl wit::HostDeflated for HostState {
    async fn read(
        &mut self,
        deflated: Resource<DeflatedHandle>,
        max: u32,
    ) -> Result<Vec<u8>, HostBlobError> {
        let want = (max as usize).clamp(1, MAX_READ_CHUNK);
        Ok(self.table.get_mut(&deflated)?.0.read(want).await?)
    }

    async fn checksum(
        &mut self,
        deflated: Resource<DeflatedHandle>,
    ) -> Result<wit::ObjectChecksum, HostBlobError> {
        let sum = self.table.get(&deflated)?.0.checksum().ok_or_else(|| {
            BlobError::Invalid("the deflated stream was not read to its end".to_string())
        })?;
        Ok(object_checksum(sum))
    }

    async fn drop(&mut self, deflated: Resource<DeflatedHandle>) -> wasmtime::Result<()> {
        self.table.delete(deflated)?;
        self.release_handle();
        Ok(())
    }
}
