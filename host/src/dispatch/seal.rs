//! A dead letter names the message it was, so that a redriven message keeps
//! the id `wasq send` printed (its result is recorded under that id). On
//! the embedded queue the row keeps its id through the move and the
//! redrive. On SQS every send makes a new id, so the dead letter carries
//! the old one in `wasq-message-id`, sealed with an HMAC keyed by a secret
//! in the data directory: anyone may send a message with that attribute,
//! and only a seal this host made is believed. Hosts with different data
//! directories do not share the secret; there a redriven message runs
//! under its new id.

use hmac::{Hmac, Mac};
use sha2::Sha256;
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

    fn mac(&self, id: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"wasq-message-id\n");
        mac.update(id.as_bytes());
        mac
    }

    /// `ID/SEAL`: the id, and proof that this host wrote it.
    pub fn seal(&self, id: &str) -> String {
        let tag = self.mac(id).finalize().into_bytes();
        format!("{id}/{}", &hex::encode(tag)[..SEAL_HEX])
    }

    /// The id inside a seal this host made; `None` for anything else.
    pub fn open<'a>(&self, sealed: &'a str) -> Option<&'a str> {
        let (id, seal) = sealed.rsplit_once('/')?;
        if id.is_empty() || seal.len() != SEAL_HEX {
            return None;
        }
        let seal = hex::decode(seal).ok()?;
        self.mac(id).verify_truncated_left(&seal).ok()?;
        Some(id)
    }
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

    #[test]
    fn only_this_hosts_seals_open() {
        let seal = IdSeal::random().unwrap();
        let sealed = seal.seal("1b4e28ba-2fa1-11d2-883f-0016d3cca427");
        assert_eq!(
            seal.open(&sealed),
            Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427")
        );
        assert_eq!(shown(&sealed), "1b4e28ba-2fa1-11d2-883f-0016d3cca427");

        // Another host's secret, a forged id under a real seal, a bare id,
        // a cut seal: none is believed.
        let other = IdSeal::random().unwrap();
        assert_eq!(other.open(&sealed), None);
        let tag = sealed.rsplit_once('/').unwrap().1;
        assert_eq!(seal.open(&format!("victim/{tag}")), None);
        assert_eq!(seal.open("1b4e28ba-2fa1-11d2-883f-0016d3cca427"), None);
        assert_eq!(seal.open(&sealed[..sealed.len() - 1]), None);
        assert_eq!(seal.open(&format!("/{tag}")), None);
    }

    #[test]
    fn the_secret_is_kept_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = IdSeal::for_data_dir(dir.path()).unwrap();
        let again = IdSeal::for_data_dir(dir.path()).unwrap();
        assert_eq!(again.open(&first.seal("m")), Some("m"));
    }
}
