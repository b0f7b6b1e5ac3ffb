//! wasq's default processor, `compress`: archives a list of objects into one
//! zip, stores it, signs a download link and records the result under the
//! job id. The job logic lives in [`archive`] and [`job`]; the component
//! glue at the bottom only adapts the WIT imports to the [`archive::Store`]
//! trait.

pub mod archive;
pub mod job;

#[cfg(target_arch = "wasm32")]
mod component {
    use crate::archive::{
        self, Checksum, Failure, ObjectDeflated, ObjectInfo, ObjectReader, ObjectWriter, Store,
        StoreError,
    };
    use bindings::wasq::processor::{blobs, config, log, records, types};
    use bindings::{Guest, Message, Outcome};

    mod bindings {
        #![allow(clippy::too_many_arguments, reason = "generated code")]
        wit_bindgen::generate!({ path: "../wit", world: "processor" });
    }

    struct Compress;

    impl Guest for Compress {
        fn handle(message: Message) -> Outcome {
            let settings = settings();
            match archive::run(&Host, &message.body, &settings) {
                Ok(summary) => {
                    let result =
                        serde_json::to_string(&summary).expect("a summary always serialises");
                    Outcome::Done(Some(result))
                }
                Err(Failure::Reject(reason)) => Outcome::Reject(reason),
                Err(Failure::Retry(reason)) => Outcome::Retry(types::RetryAfter {
                    reason,
                    delay_secs: None,
                }),
            }
        }
    }

    fn settings() -> archive::Settings {
        let mut settings = archive::Settings::default();
        match config::get("level").map(|l| l.parse::<i64>()) {
            Some(Ok(level)) if (0..=9).contains(&level) => settings.level = level,
            Some(_) => log::log(
                log::Level::Warn,
                "setting `level` must be 0-9; using the default",
            ),
            None => {}
        }
        settings.output_prefix = config::get("output-prefix");
        settings
    }

    struct Host;

    impl From<blobs::Error> for StoreError {
        fn from(err: blobs::Error) -> Self {
            match err {
                blobs::Error::NotFound(m) => StoreError::NotFound(m),
                blobs::Error::Denied(m) => StoreError::Denied(m),
                blobs::Error::Invalid(m) => StoreError::Invalid(m),
                blobs::Error::Unavailable(m) => StoreError::Unavailable(m),
            }
        }
    }

    fn info(object: blobs::ObjectInfo) -> ObjectInfo {
        ObjectInfo {
            uri: object.uri,
            size: object.size,
            content_type: object.content_type,
        }
    }

    impl ObjectReader for blobs::Reader {
        fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError> {
            Ok(blobs::Reader::read(self, max)?)
        }
    }

    impl ObjectDeflated for blobs::Deflated {
        fn read(&mut self, max: u32) -> Result<Vec<u8>, StoreError> {
            Ok(blobs::Deflated::read(self, max)?)
        }
        fn checksum(&self) -> Result<Checksum, StoreError> {
            let sum = blobs::Deflated::checksum(self)?;
            Ok(Checksum {
                crc32: sum.crc32,
                size: sum.size,
            })
        }
    }

    impl ObjectWriter for blobs::Writer {
        fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
            Ok(blobs::Writer::write(self, chunk)?)
        }
        fn finish(self) -> Result<ObjectInfo, StoreError> {
            Ok(info(blobs::Writer::finish(&self)?))
        }
    }

    impl Store for Host {
        type Reader = blobs::Reader;
        type Writer = blobs::Writer;
        type Deflated = blobs::Deflated;

        fn stat(&self, uri: &str) -> Result<ObjectInfo, StoreError> {
            Ok(info(blobs::stat(uri)?))
        }
        fn open(&self, uri: &str) -> Result<blobs::Reader, StoreError> {
            Ok(blobs::open(uri)?)
        }
        fn create(
            &self,
            uri: &str,
            content_type: Option<&str>,
        ) -> Result<blobs::Writer, StoreError> {
            Ok(blobs::create(uri, content_type)?)
        }
        fn presign_get(&self, uri: &str, expires_in_secs: u32) -> Result<String, StoreError> {
            Ok(blobs::presign_get(uri, expires_in_secs)?)
        }
        fn put_record(&self, table: &str, key: &str, value: &str) -> Result<(), String> {
            records::put(table, key, value)
        }
        fn info(&self, message: &str) {
            log::log(log::Level::Info, message);
        }
        fn debug(&self, message: &str) {
            log::log(log::Level::Debug, message);
        }
        fn prefetch(&self, uris: &[String]) {
            blobs::prefetch(uris);
        }
        fn checksum(&self, reader: &blobs::Reader) -> Result<Option<Checksum>, StoreError> {
            Ok(reader.checksum()?.map(|sum| Checksum {
                crc32: sum.crc32,
                size: sum.size,
            }))
        }
        fn append_from(
            &self,
            writer: &mut blobs::Writer,
            reader: &blobs::Reader,
            offset: u64,
            length: u64,
        ) -> Result<bool, StoreError> {
            Ok(writer.append_from(reader, offset, length)?)
        }
        fn deflate(
            &self,
            reader: blobs::Reader,
            level: u32,
        ) -> Result<blobs::Deflated, StoreError> {
            let level = u8::try_from(level)
                .map_err(|_| StoreError::Invalid(format!("deflate level {level}")))?;
            Ok(blobs::deflate(reader, level)?)
        }
    }

    bindings::export!(Compress with_types_in bindings);
}
