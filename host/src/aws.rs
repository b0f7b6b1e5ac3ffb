//! Settings shared by the AWS backends: credentials and region from the
//! standard AWS chain (environment, profiles, SSO, process, container and
//! instance roles), an optional endpoint for SQS/S3-compatible servers, and
//! path-style addressing for S3 servers that need it.

use aws_config::BehaviorVersion;
// The smithy types are shared by every AWS SDK crate; these paths are
// SQS's re-exports of them.
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};

/// How to reach AWS (or a compatible server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsOptions {
    /// Overrides every service's endpoint; `AWS_ENDPOINT_URL` works too.
    pub endpoint_url: Option<String>,
    /// Overrides the region of the chain (`AWS_REGION`, profile).
    pub region: Option<String>,
    /// Address S3 buckets as `ENDPOINT/bucket/key` rather than
    /// `bucket.ENDPOINT/key`.
    pub s3_path_style: bool,
}

impl AwsOptions {
    /// Loads the shared configuration through the default chain.
    pub async fn load(&self) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(url) = &self.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(region) = &self.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        loader.load().await
    }
}

/// What went wrong with an AWS call, in the terms the backends report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The resource does not exist.
    Missing(String),
    /// The credentials may not do this (or are not valid).
    Denied(String),
    /// The request itself is wrong.
    Invalid(String),
    /// The service could not be reached or failed: worth retrying.
    Unavailable(String),
}

/// Error codes that mean "this does not exist", across SQS, S3 and DynamoDB.
const MISSING: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NoSuchBucket",
    "NoSuchKey",
    "NotFound",
    "NoSuchUpload",
    "ResourceNotFoundException",
];
const DENIED: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "Forbidden",
];
const UNAVAILABLE: &[&str] = &[
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "SlowDown",
    "RequestTimeout",
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "KMS.ThrottlingException",
];

/// Sorts an SDK error into a [`Failure`] whose message starts with `what`
/// (the resource, e.g. "queue `jobs`").
pub fn classify<E>(what: &str, err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let code = inner.code().unwrap_or("Unknown");
            let message = inner.message().unwrap_or("");
            // A HEAD request's 404 carries no code, only the status.
            let status = service.raw().status().as_u16();
            let text = if message.is_empty() {
                format!("{what}: {code}")
            } else {
                format!("{what}: {code}: {message}")
            };
            if MISSING.contains(&code) || status == 404 {
                Failure::Missing(text)
            } else if DENIED.contains(&code) || status == 403 {
                Failure::Denied(text)
            } else if UNAVAILABLE.contains(&code) || status >= 500 || status == 429 {
                Failure::Unavailable(text)
            } else {
                Failure::Invalid(text)
            }
        }
        other => Failure::Unavailable(format!("{what}: {}", causes(other))),
    }
}

/// An error and its causes on one line, each told once: "dispatch failure:
/// io error: tcp connect error: Connection refused (os error 111)". The
/// SDK's own `DisplayErrorContext` adds a `Debug` dump of the whole error,
/// which is not for people to read.
pub fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        // Wrappers often repeat their cause's text in their own.
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        cause: Option<Box<Layer>>,
    }

    fn layers(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |cause, text| {
                Some(Layer {
                    text,
                    cause: cause.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn causes_are_told_once_and_never_as_debug() {
        let err = layers(&[
            "dispatch failure",
            "io error",
            "client error (Connect)",
            "tcp connect error",
            "Connection refused (os error 111)",
            "Connection refused (os error 111)",
        ]);
        assert_eq!(
            causes(&err),
            "dispatch failure: io error: client error (Connect): tcp connect error: Connection refused (os error 111)"
        );
        assert!(!causes(&err).contains("Layer"));
    }
}
