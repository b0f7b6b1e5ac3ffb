//! A dead letter names the message it was, so that a redriven message keeps
//! the id `wasq send` printed (its result is recorded under that id). On
//! the embedded queue the row keeps its id through the move and the
//! redrive. On SQS every send makes a new id, so the dead letter carries
//! the old one in `wasq-message-id`, sealed with an HMAC keyed by a secret
//! in the data directory over the id, the queue, the body and the FIFO
//! group: anyone may send a message with that attribute, and only a seal
//! this host made for that very message is believed (copied onto another
//! body, it opens nothing). Hosts with different data
//! directories do not share the secret; there a redriven message runs
//! under its new id.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io;
use std::path::Path;

type HmacSha256 = Hmac<Sha256>;

/// The file, in the data directory, that holds the sealing secret.
pub const SECRET_FILE: &str = "message-id-secret";
/// Hex digits of the seal kept after the id.
const SEAL_HEX: usize = 32;

/// Seals message ids and opens seals.
#[derive(Clone)]
pub struct IdSeal {
    secret: [u8; crate::secret::SECRET_LEN],
}

impl std::fmt::Debug for IdSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdSeal").finish_non_exhaustive()
    }
}

impl IdSeal {
    /// The data directory's secret, generated (mode 0600) on first use.
    pub fn for_data_dir(data_dir: &Path) -> io::Result<Self> {
        Ok(IdSeal {
            secret: crate::secret::load_or_create(data_dir, SECRET_FILE)?,
        })
    }

    /// A secret of its own, for a host whose seals nobody else opens.
    pub fn random() -> io::Result<Self> {
        let mut secret = [0u8; crate::secret::SECRET_LEN];
        getrandom::fill(&mut secret).map_err(io::Error::other)?;
        Ok(IdSeal { secret })
    }

    fn mac(&self, id: &str, of: &Of<'_>) -> HmacSha256 {
        self.mac_as(b"wasq-message-id\n", id, of)
    }

    /// A MAC under `domain`, so that a value sealed for one attribute opens
    /// under no other.
    fn mac_as(&self, domain: &[u8], id: &str, of: &Of<'_>) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(domain);
        // Each field with its length, so that no two tuples read the same.
        for field in [
            id.as_bytes(),
            of.queue.as_bytes(),
            &Sha256::digest(of.body.as_bytes()),
            of.group.unwrap_or("").as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_le_bytes());
            mac.update(field);
        }
        mac
    }

    /// `ID/SEAL`: the id, and proof that this host wrote it for this
    /// message.
    pub fn seal(&self, id: &str, of: &Of<'_>) -> String {
        let tag = self.mac(id, of).finalize().into_bytes();
        format!("{id}/{}", &hex::encode(tag)[..SEAL_HEX])
    }

    /// The id inside a seal this host made for this very message (queue,
    /// body and group); `None` for anything else, a seal copied onto
    /// another message included.
    pub fn open<'a>(&self, sealed: &'a str, of: &Of<'_>) -> Option<&'a str> {
        let (id, seal) = sealed.rsplit_once('/')?;
        if id.is_empty() || seal.len() != SEAL_HEX {
            return None;
        }
        let seal = hex::decode(seal).ok()?;
        self.mac(id, of).verify_truncated_left(&seal).ok()?;
        Some(id)
    }

    /// `N/SEAL`: the attempts a message had before it was sent again as a
    /// fresh copy, sealed to that message apart from ids.
    pub fn seal_attempts(&self, attempts: u32, of: &Of<'_>) -> String {
        let n = attempts.to_string();
        let tag = self.mac_as(ATTEMPTS_DOMAIN, &n, of).finalize().into_bytes();
        format!("{n}/{}", &hex::encode(tag)[..SEAL_HEX])
    }

    /// The attempts inside a seal this host made for this very message.
    pub fn open_attempts(&self, sealed: &str, of: &Of<'_>) -> Option<u32> {
        let (n, seal) = sealed.rsplit_once('/')?;
        if seal.len() != SEAL_HEX {
            return None;
        }
        let seal = hex::decode(seal).ok()?;
        self.mac_as(ATTEMPTS_DOMAIN, n, of)
            .verify_truncated_left(&seal)
            .ok()?;
        n.parse().ok()
    }
}

const ATTEMPTS_DOMAIN: &[u8] = b"wasq-attempts\n";

/// The message a seal is for, besides its id: the queue it runs on, its
/// body and its FIFO group.
#[derive(Debug, Clone, Copy)]
pub struct Of<'a> {
    pub queue: &'a str,
    pub body: &'a str,
    pub group: Option<&'a str>,
}

/// The id part of a sealed value, for showing (not for believing).
pub fn shown(sealed: &str) -> &str {
    match sealed.rsplit_once('/') {
        Some((id, seal)) if seal.len() == SEAL_HEX => id,
        _ => sealed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts are sealed apart from ids: neither opens as the other,
    /// and neither opens on another message.
    #[test]
    fn attempts_and_ids_do_not_open_as_each_other() {
        let seal = IdSeal::random().unwrap();
        let attempts = seal.seal_attempts(2, &JOB);
        assert_eq!(seal.open_attempts(&attempts, &JOB), Some(2));
        assert_eq!(seal.open(&attempts, &JOB), None);
        let id = seal.seal("2", &JOB);
        assert_eq!(seal.open_attempts(&id, &JOB), None);
        let other = Of {
            body: "other",
            ..JOB
        };
        assert_eq!(seal.open_attempts(&attempts, &other), None);
        assert_eq!(seal.open_attempts("9/0000", &JOB), None);
    }

    const JOB: Of<'static> = Of {
        queue: "jobs",
        body: "{\"job_id\": \"a\"}",
        group: None,
    };

    #[test]
    fn only_this_hosts_seals_open() {
        let seal = IdSeal::random().unwrap();
        let id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
        let sealed = seal.seal(id, &JOB);
        assert_eq!(seal.open(&sealed, &JOB), Some(id));
        assert_eq!(shown(&sealed), id);

        // Another host's secret, a forged id under a real seal, a bare id,
        // a cut seal: none is believed.
        let other = IdSeal::random().unwrap();
        assert_eq!(other.open(&sealed, &JOB), None);
        let tag = sealed.rsplit_once('/').unwrap().1;
        assert_eq!(seal.open(&format!("victim/{tag}"), &JOB), None);
        assert_eq!(seal.open(id, &JOB), None);
        assert_eq!(seal.open(&sealed[..sealed.len() - 1], &JOB), None);
        assert_eq!(seal.open(&format!("/{tag}"), &JOB), None);
    }

    /// A real seal copied onto another message (another body, queue or
    /// group) does not give that message the sealed id.
    #[test]
    fn a_seal_opens_only_on_the_message_it_was_made_for() {
        let seal = IdSeal::random().unwrap();
        let sealed = seal.seal("m", &JOB);
        for other in [
            Of {
                body: "{\"job_id\": \"b\"}",
                ..JOB
            },
            Of {
                queue: "other",
                ..JOB
            },
            Of {
                group: Some("g"),
                ..JOB
            },
        ] {
            assert_eq!(seal.open(&sealed, &other), None, "{other:?}");
        }
    }

    #[test]
    fn the_secret_is_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = IdSeal::for_data_dir(dir.path()).unwrap();
        let again = IdSeal::for_data_dir(dir.path()).unwrap();
        assert_eq!(again.open(&first.seal("m", &JOB), &JOB), Some("m"));
    }
}
