//! Large payloads in the format of Amazon's SQS Extended Client libraries
//! (Java, Python): a body too large for the queue is stored as an object,
//! and the message carries a pointer to it, `["software.amazon.
//! payloadoffloading.PayloadS3Pointer", {"s3BucketName": B, "s3Key": K}]`,
//! with its size in the `ExtendedPayloadSize` attribute (the older Java
//! library: `com.amazon.sqs.javamessaging.MessageS3Pointer` and
//! `SQSLargePayloadSize`).
//!
//! The host reads the payload, bounded, and the processor sees the real
//! body; once the message is done (or filtered out, or dropped) the object
//! is deleted, as the libraries do; a dead letter keeps its pointer and
//! so its payload. A pointer is the sender's text: it is followed only
//! into the one bucket the binding names, since the host's credentials
//! may read much more than any sender should make it fetch.

use crate::blobs::{BlobError, BlobStore, BlobUri, Budget};
use crate::queue::Outgoing;
use serde_json::{Value, json};

/// The attribute holding the payload's size, as the libraries write it.
pub const SIZE_ATTRIBUTE: &str = "ExtendedPayloadSize";
/// The older Java library's name for it, still read.
pub const LEGACY_SIZE_ATTRIBUTE: &str = "SQSLargePayloadSize";
const POINTER_CLASS: &str = "software.amazon.payloadoffloading.PayloadS3Pointer";
const LEGACY_POINTER_CLASS: &str = "com.amazon.sqs.javamessaging.MessageS3Pointer";

/// A payload's largest size unless the binding says otherwise: 16 MiB.
pub const DEFAULT_MAX: u64 = 16 << 20;
/// The largest `payload-max` a binding may give: 1 GiB.
pub const LARGEST_MAX: u64 = 1 << 30;
/// How much is read from the store at once.
const CHUNK: usize = 1 << 20;

/// Where a binding's payloads may be read from, and how large one may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadPolicy {
    /// The only bucket pointers are followed into; `None` follows none.
    pub bucket: Option<String>,
    pub max: u64,
}

impl Default for PayloadPolicy {
    fn default() -> Self {
        PayloadPolicy {
            bucket: None,
            max: DEFAULT_MAX,
        }
    }
}

/// A message's pointer to its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub uri: BlobUri,
    /// The size the sender declared.
    pub size: u64,
}

/// Why a payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// It never will be: the message is dead-lettered with this reason.
    #[error("{0}")]
    Refused(String),
    /// Perhaps later: the message is retried.
    #[error("{0}")]
    Unavailable(String),
}

/// The pointer of a message the extended client sent: `None` for any
/// other message (no size attribute), an error naming what is wrong for
/// a pointer that cannot be one.
pub fn pointer(body: &str, attributes: &[(String, String)]) -> Option<Result<Pointer, String>> {
    let (name, size) = attributes
        .iter()
        .find(|(name, _)| name == SIZE_ATTRIBUTE || name == LEGACY_SIZE_ATTRIBUTE)?;
    Some(parse_pointer(name, size, body))
}

fn parse_pointer(name: &str, size: &str, body: &str) -> Result<Pointer, String> {
    let size: u64 = size.trim().parse().map_err(|_| {
        format!(
            "attribute {name} is `{}`, not a size in bytes",
            crate::text::truncate(&crate::text::escape(size), 64)
        )
    })?;
    let shape = "the body of a message with the attribute is [\"software.amazon.payloadoffloading.PayloadS3Pointer\", {\"s3BucketName\": ..., \"s3Key\": ...}]";
    let value: Value =
        serde_json::from_str(body).map_err(|_| format!("{shape}; it is not JSON"))?;
    let (class, place) = match value.as_array().map(Vec::as_slice) {
        Some([Value::String(class), Value::Object(place)]) => (class, place),
        _ => return Err(shape.to_string()),
    };
    if class != POINTER_CLASS && class != LEGACY_POINTER_CLASS {
        return Err(format!(
            "{shape}; the pointer class is `{}`",
            crate::text::truncate(&crate::text::escape(class), 96)
        ));
    }
    let (Some(Value::String(bucket)), Some(Value::String(key))) =
        (place.get("s3BucketName"), place.get("s3Key"))
    else {
        return Err(format!("{shape}; s3BucketName or s3Key is missing"));
    };
    let uri = BlobUri::parse(&format!("s3://{bucket}/{key}"))
        .map_err(|err| format!("the pointer names no object wasq can read: {err}"))?;
    Ok(Pointer { uri, size })
}

/// The attributes a processor sees of a message that carried a pointer:
/// all but the size, as the libraries hand them to their callers.
pub fn without_size(attributes: &[(String, String)]) -> Vec<(String, String)> {
    attributes
        .iter()
        .filter(|(name, _)| name != SIZE_ATTRIBUTE && name != LEGACY_SIZE_ATTRIBUTE)
        .cloned()
        .collect()
}

/// Reads a payload as the message's body: from the binding's bucket only,
/// at most `policy.max` bytes, UTF-8.
pub async fn fetch(
    blobs: &dyn BlobStore,
    pointer: &Pointer,
    policy: &PayloadPolicy,
) -> Result<String, PayloadError> {
    let uri = &pointer.uri;
    let Some(bucket) = &policy.bucket else {
        return Err(PayloadError::Refused(format!(
            "the message's body is a large-payload pointer to {uri}, and the binding reads no payloads (give it payload-bucket)"
        )));
    };
    if uri.bucket() != bucket {
        return Err(PayloadError::Refused(format!(
            "the payload pointer names {uri}; this binding reads payloads from bucket {bucket} only"
        )));
    }
    let too_large = |size: u64| {
        PayloadError::Refused(format!(
            "the payload {uri} is {size} bytes, over the binding's payload-max of {} bytes",
            policy.max
        ))
    };
    if pointer.size > policy.max {
        return Err(too_large(pointer.size));
    }
    let budget = Budget::new(crate::blobs::DEFAULT_BUDGET);
    let mut reader = blobs
        .open(uri, &budget)
        .await
        .map_err(|err| from_blob(uri, err))?;
    let size = reader.info().size;
    if size > policy.max {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    loop {
        let chunk = reader
            .read(CHUNK)
            .await
            .map_err(|err| from_blob(uri, err))?;
        if chunk.is_empty() {
            break;
        }
        // The object may have grown since it was opened.
        if (bytes.len() + chunk.len()) as u64 > policy.max {
            return Err(too_large((bytes.len() + chunk.len()) as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|err| {
        PayloadError::Refused(format!(
            "the payload {uri} is not UTF-8 text (at byte {})",
            err.utf8_error().valid_up_to()
        ))
    })
}

fn from_blob(uri: &BlobUri, err: BlobError) -> PayloadError {
    match err {
        BlobError::NotFound(_) => PayloadError::Refused(format!(
            "the payload {uri} is gone (deleted, or never stored)"
        )),
        BlobError::Invalid(what) => PayloadError::Refused(what),
        other => PayloadError::Unavailable(format!("could not read the payload {uri}: {other}")),
    }
}

/// Stores `body` in `bucket` under a fresh key and returns the message
/// that points at it, as the libraries send it (their consumers read it
/// back).
pub async fn offload(
    blobs: &dyn BlobStore,
    bucket: &str,
    message: Outgoing,
) -> anyhow::Result<Outgoing> {
    use anyhow::Context as _;
    let key = uuid::Uuid::new_v4().to_string();
    let uri = BlobUri::parse(&format!("s3://{bucket}/{key}"))
        .with_context(|| format!("payload bucket `{}`", crate::text::Escaped(bucket)))?;
    let budget = Budget::new(crate::blobs::DEFAULT_BUDGET);
    let mut writer = blobs
        .create(
            &uri,
            crate::blobs::CreateOptions {
                content_type: Some("text/plain; charset=utf-8"),
                overwrite: false,
                owner: &key,
                budget: &budget,
            },
        )
        .await
        .with_context(|| format!("storing the payload at {uri}"))?;
    let size = message.body.len();
    for chunk in message.body.as_bytes().chunks(CHUNK) {
        writer
            .write(chunk.to_vec())
            .await
            .with_context(|| format!("storing the payload at {uri}"))?;
    }
    writer
        .finish()
        .await
        .with_context(|| format!("storing the payload at {uri}"))?;
    let mut attributes = message.attributes;
    attributes.push((SIZE_ATTRIBUTE.to_string(), size.to_string()));
    Ok(Outgoing {
        body: json!([POINTER_CLASS, {"s3BucketName": bucket, "s3Key": key}]).to_string(),
        attributes,
        ..message
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// The body the Python library sends (`json.dumps` of the pointer).
    #[test]
    fn the_libraries_pointers_are_read() {
        let body = r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "payloads", "s3Key": "8f0e6a2c-3b1d-4c5e-9f7a-0b1c2d3e4f50"}]"#;
        let p = pointer(body, &attrs(&[("ExtendedPayloadSize", "300000")]))
            .unwrap()
            .unwrap();
        assert_eq!(
            p.uri.to_string(),
            "s3://payloads/8f0e6a2c-3b1d-4c5e-9f7a-0b1c2d3e4f50"
        );
        assert_eq!(p.size, 300_000);
        let legacy = r#"["com.amazon.sqs.javamessaging.MessageS3Pointer",{"s3BucketName":"payloads","s3Key":"k"}]"#;
        assert!(
            pointer(legacy, &attrs(&[("SQSLargePayloadSize", "9")]))
                .unwrap()
                .is_ok()
        );
        // Without the attribute, the same text is an ordinary body.
        assert_eq!(pointer(body, &attrs(&[("other", "1")])), None);
    }

    #[test]
    fn a_bad_pointer_says_what_is_wrong() {
        let size = attrs(&[("ExtendedPayloadSize", "10")]);
        let cases = [
            ("not json", "it is not JSON"),
            (
                r#"["x", {"s3BucketName": "b", "s3Key": "k"}]"#,
                "the pointer class is `x`",
            ),
            (
                r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3Key": "k"}]"#,
                "s3BucketName or s3Key is missing",
            ),
            (
                r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "../../etc/passwd"}]"#,
                "names no object wasq can read",
            ),
            (
                r#"["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "B A D", "s3Key": "k"}]"#,
                "names no object wasq can read",
            ),
        ];
        for (body, want) in cases {
            let err = pointer(body, &size).unwrap().unwrap_err();
            assert!(err.contains(want), "{body}: {err}");
        }
        let err = pointer("[]", &attrs(&[("ExtendedPayloadSize", "ten\x1b[2J")]))
            .unwrap()
            .unwrap_err();
        assert!(err.contains("not a size in bytes"), "{err}");
        assert!(
            !err.contains('\x1b'),
            "the sender's escape reaches a log: {err:?}"
        );
    }

    #[tokio::test]
    async fn payloads_are_read_from_the_bindings_bucket_only_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let signer = crate::blobs::sign::LinkSigner::new([1; 32], "http://127.0.0.1:1");
        let blobs = crate::blobs::LocalBlobs::new(dir.path(), signer).unwrap();
        let policy = PayloadPolicy {
            bucket: Some("payloads".into()),
            max: 1000,
        };
        let sent = offload(
            &blobs,
            "payloads",
            Outgoing {
                body: "é".repeat(400),
                attributes: attrs(&[("tenant", "acme")]),
                ..Outgoing::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            sent.attributes,
            attrs(&[("tenant", "acme"), ("ExtendedPayloadSize", "800")])
        );
        let p = pointer(&sent.body, &sent.attributes).unwrap().unwrap();
        assert_eq!(fetch(&blobs, &p, &policy).await.unwrap(), "é".repeat(400));
        assert_eq!(without_size(&sent.attributes), attrs(&[("tenant", "acme")]));

        let small = PayloadPolicy {
            max: 799,
            ..policy.clone()
        };
        let err = fetch(&blobs, &p, &small).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("800 bytes, over the binding's payload-max of 799"),
            "{err}"
        );
        // A sender that understates the size is caught as it is read.
        let lying = Pointer {
            size: 10,
            ..p.clone()
        };
        assert!(matches!(
            fetch(&blobs, &lying, &small).await,
            Err(PayloadError::Refused(_))
        ));

        let elsewhere = PayloadPolicy {
            bucket: Some("other".into()),
            ..policy.clone()
        };
        let err = fetch(&blobs, &p, &elsewhere).await.unwrap_err().to_string();
        assert!(
            err.contains("reads payloads from bucket other only"),
            "{err}"
        );
        let none = PayloadPolicy::default();
        let err = fetch(&blobs, &p, &none).await.unwrap_err().to_string();
        assert!(err.contains("give it payload-bucket"), "{err}");

        blobs.delete(&p.uri).await.unwrap();
        blobs.delete(&p.uri).await.unwrap();
        let err = fetch(&blobs, &p, &policy).await.unwrap_err();
        assert!(
            matches!(&err, PayloadError::Refused(r) if r.contains("is gone")),
            "{err}"
        );
    }
}
