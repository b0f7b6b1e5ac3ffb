//! Signed, expiring download links for the local store: the URL carries its
//! expiry, the version of the object it was made for, and an HMAC-SHA256
//! over method, bucket, key, version and expiry, keyed by a secret kept in
//! the data directory. wasq's HTTP server checks them with
//! [`LinkSigner::verify`], and serves only the version the link names: a
//! replaced object makes older links fail instead of serving new bytes.

use super::BlobUri;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::Sha256;
use std::io;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// The file, in the data directory, that holds the signing secret.
pub const SECRET_FILE: &str = "link-secret";
/// The path under which the HTTP server serves signed links.
pub const LINK_PREFIX: &str = "/blobs/";
use crate::secret::SECRET_LEN;

/// Key characters left as they are in a link: RFC 3986's unreserved set and
/// the `/` that separates key segments.
const KEY_ESCAPE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Why a link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("malformed link: {0}")]
    Malformed(String),
    #[error("link expired")]
    Expired,
    #[error("link signature does not match")]
    BadSignature,
}

/// Makes and checks signed links.
#[derive(Clone)]
pub struct LinkSigner {
    secret: [u8; SECRET_LEN],
    base_url: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl LinkSigner {
    /// A signer with the given secret; links start with `base_url`
    /// (for example `http://127.0.0.1:8080`).
    pub fn new(secret: [u8; SECRET_LEN], base_url: &str) -> Self {
        LinkSigner {
            secret,
            base_url: base_url.trim_end_matches('/').to_string(),
        }
    }

    /// Where links point.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Loads the data directory's secret, generating it (mode 0600) on first
    /// use.
    pub fn for_data_dir(data_dir: &Path, base_url: &str) -> io::Result<Self> {
        let secret = crate::secret::load_or_create(data_dir, SECRET_FILE)?;
        Ok(LinkSigner::new(secret, base_url))
    }

    /// The link to version `version` of `uri`, valid until `expires_at`
    /// (Unix seconds). Versions are the store's etags: hex digits and `-`.
    pub fn sign(&self, uri: &BlobUri, version: &str, expires_at: u64) -> String {
        debug_assert!(valid_version(version), "{version}");
        let signature = hex::encode(self.mac(uri.bucket(), uri.key(), version, expires_at));
        format!(
            "{}{LINK_PREFIX}{}/{}?expires={expires_at}&version={version}&signature={signature}",
            self.base_url,
            uri.bucket(),
            utf8_percent_encode(uri.key(), KEY_ESCAPE),
        )
    }

    /// Checks a link's path and query (as an HTTP server receives them) at
    /// time `now` (Unix seconds), and returns the object and the version of
    /// it that the link grants.
    pub fn verify(
        &self,
        path: &str,
        query: &str,
        now: u64,
    ) -> Result<(BlobUri, String), LinkError> {
        let rest = path.strip_prefix(LINK_PREFIX).ok_or_else(|| {
            LinkError::Malformed(format!("path does not start with {LINK_PREFIX}"))
        })?;
        let (bucket, encoded_key) = rest
            .split_once('/')
            .ok_or_else(|| LinkError::Malformed("path has no key".into()))?;
        let key = percent_decode_str(encoded_key)
            .decode_utf8()
            .map_err(|_| LinkError::Malformed("key is not UTF-8".into()))?;
        let uri = BlobUri::parse(&format!("s3://{bucket}/{key}"))
            .map_err(|err| LinkError::Malformed(err.to_string()))?;

        let mut expires = None;
        let mut signature = None;
        let mut version = None;
        for pair in query.split('&') {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "expires" => &mut expires,
                "signature" => &mut signature,
                "version" => &mut version,
                _ => continue,
            };
            // A parameter given twice could be read one way here and
            // another way elsewhere.
            if slot.replace(value).is_some() {
                return Err(LinkError::Malformed(format!(
                    "parameter {name} given twice"
                )));
            }
        }
        let version = version
            .filter(|v| valid_version(v))
            .ok_or_else(|| LinkError::Malformed("no valid version parameter".into()))?;
        let expires_at: u64 = expires
            .ok_or_else(|| LinkError::Malformed("no expires parameter".into()))?
            .parse()
            .map_err(|_| LinkError::Malformed("expires is not a number".into()))?;
        let signature = hex::decode(
            signature.ok_or_else(|| LinkError::Malformed("no signature parameter".into()))?,
        )
        .map_err(|_| LinkError::Malformed("signature is not hex".into()))?;

        // The signature is checked before the expiry so that a forged link
        // learns nothing from the answer.
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(&message(uri.bucket(), uri.key(), version, expires_at));
        mac.verify_slice(&signature)
            .map_err(|_| LinkError::BadSignature)?;
        if now >= expires_at {
            return Err(LinkError::Expired);
        }
        Ok((uri, version.to_string()))
    }

    fn mac(&self, bucket: &str, key: &str, version: &str, expires_at: u64) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(&message(bucket, key, version, expires_at));
        mac.finalize().into_bytes().to_vec()
    }
}

/// A version is what the local store's etags are made of.
fn valid_version(version: &str) -> bool {
    (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// What is signed. Fields are separated by newlines, which neither a bucket
/// name, a version nor a decimal number can contain, and the key comes last,
/// so no two links share a message.
fn message(bucket: &str, key: &str, version: &str, expires_at: u64) -> Vec<u8> {
    format!("GET\n{bucket}\n{expires_at}\n{version}\n{key}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn signer() -> LinkSigner {
        LinkSigner::new([7; SECRET_LEN], "http://127.0.0.1:8080/")
    }

    fn split(link: &str) -> (&str, &str) {
        let path_and_query = link.strip_prefix("http://127.0.0.1:8080").unwrap();
        path_and_query.split_once('?').unwrap()
    }

    #[test]
    fn a_fresh_link_verifies_to_its_object() {
        let uri = BlobUri::parse("s3://archives/jobs/j 1/ü.zip").unwrap();
        let link = signer().sign(&uri, "1f-2a", 2_000);
        assert!(link.starts_with("http://127.0.0.1:8080/blobs/archives/jobs/j%201/%C3%BC.zip?"));
        let (path, query) = split(&link);
        assert_eq!(
            signer().verify(path, query, 1_999),
            Ok((uri, "1f-2a".to_string()))
        );
    }

    #[test]
    fn a_tampered_path_is_refused() {
        let uri = BlobUri::parse("s3://archives/a.zip").unwrap();
        let link = signer().sign(&uri, "1f-2a", 2_000);
        let (path, query) = split(&link);
        let other = path.replace("a.zip", "b.zip");
        assert_eq!(
            signer().verify(&other, query, 1_000),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_expiry_is_refused() {
        let uri = BlobUri::parse("s3://archives/a.zip").unwrap();
        let link = signer().sign(&uri, "1f-2a", 2_000);
        let (path, query) = split(&link);
        let later = query.replace("expires=2000", "expires=9000");
        assert_eq!(
            signer().verify(path, &later, 1_000),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn a_tampered_version_is_refused() {
        let uri = BlobUri::parse("s3://archives/a.zip").unwrap();
        let link = signer().sign(&uri, "1f-2a", 2_000);
        let (path, query) = split(&link);
        let other = query.replace("version=1f-2a", "version=1f-2b");
        assert_eq!(
            signer().verify(path, &other, 1_000),
            Err(LinkError::BadSignature)
        );
        let twice = format!("{query}&version=1f-2b");
        assert!(matches!(
            signer().verify(path, &twice, 1_000),
            Err(LinkError::Malformed(_))
        ));
    }

    #[test]
    fn an_expired_link_is_refused() {
        let uri = BlobUri::parse("s3://archives/a.zip").unwrap();
        let link = signer().sign(&uri, "1f-2a", 2_000);
        let (path, query) = split(&link);
        assert_eq!(signer().verify(path, query, 2_000), Err(LinkError::Expired));
    }

    #[test]
    fn another_secret_does_not_verify() {
        let uri = BlobUri::parse("s3://archives/a.zip").unwrap();
        let link = signer().sign(&uri, "1f-2a", 2_000);
        let (path, query) = split(&link);
        let stranger = LinkSigner::new([8; SECRET_LEN], "http://127.0.0.1:8080");
        assert_eq!(
            stranger.verify(path, query, 1_000),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn missing_parts_are_malformed() {
        let s = signer();
        assert!(matches!(
            s.verify("/other/a/b", "", 0),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            s.verify("/blobs/archives", "", 0),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            s.verify("/blobs/archives/a", "expires=1", 0),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            s.verify("/blobs/archives/a", "expires=x&version=1&signature=00", 0),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            s.verify(
                "/blobs/archives/a",
                "expires=1&version=1%0a&signature=00",
                0
            ),
            Err(LinkError::Malformed(_))
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Any change to a link's path or query is refused, never accepted
        /// for another object, version or time.
        #[test]
        fn a_changed_link_never_verifies(
            key in "[a-z]{1,6}(/[a-z ü]{1,6}){0,2}",
            version in "[0-9a-f]{1,8}-[0-9a-f]{1,8}",
            at in 0usize..200,
            byte in proptest::prelude::any::<u8>(),
        ) {
            let uri = BlobUri::parse(&format!("s3://archives/{key}")).unwrap();
            let link = signer().sign(&uri, &version, 2_000);
            let (path, query) = split(&link);
            proptest::prop_assert_eq!(signer().verify(path, query, 1_000), Ok((uri.clone(), version.clone())));
            let mut whole = format!("{path}?{query}").into_bytes();
            let at = at % whole.len();
            proptest::prop_assume!(whole[at] != byte);
            whole[at] = byte;
            let Ok(changed) = String::from_utf8(whole) else { return Ok(()) };
            let (p, q) = changed.split_once('?').unwrap_or((&changed, ""));
            let verified = signer().verify(p, q, 1_000);
            // Only an edit that decodes to the same link may pass (`%41`
            // for `A`); anything else is refused.
            if let Ok((got, got_version)) = verified {
                proptest::prop_assert_eq!(got, uri);
                proptest::prop_assert_eq!(got_version, version);
            }
        }
    }

    #[test]
    fn the_secret_is_made_once_with_owner_only_access() {
        let dir = tempfile::tempdir().unwrap();
        let first = LinkSigner::for_data_dir(dir.path(), "http://h").unwrap();
        let second = LinkSigner::for_data_dir(dir.path(), "http://h").unwrap();
        assert_eq!(first.secret, second.secret);
        let mode = fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
