//! Upstream API keys at rest: sealed with AES-256-GCM under a key derived
//! from `OBLETH_ENCRYPTION_KEY` when it is set, stored as given otherwise.

use openssl::symm::{decrypt_aead, encrypt_aead, Cipher};

const SEALED_PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Seals and opens upstream keys.
#[derive(Clone, Default)]
pub struct UpstreamKeyCipher {
    key: Option<[u8; 32]>,
}

impl UpstreamKeyCipher {
    /// `secret` is any string; the AES key is its SHA-256.
    pub fn new(secret: Option<&str>) -> Self {
        Self {
            key: secret
                .filter(|s| !s.is_empty())
                .map(|s| openssl::sha::sha256(s.as_bytes())),
        }
    }

    pub fn seal(&self, plain: &str) -> Result<String, String> {
        let Some(key) = &self.key else {
            return Ok(plain.to_string());
        };
        let mut nonce = [0u8; NONCE_LEN];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| e.to_string())?;
        let mut tag = [0u8; TAG_LEN];
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(&nonce),
            b"obleth-upstream-key",
            plain.as_bytes(),
            &mut tag,
        )
        .map_err(|e| e.to_string())?;
        let mut all = nonce.to_vec();
        all.extend_from_slice(&sealed);
        all.extend_from_slice(&tag);
        Ok(format!("{SEALED_PREFIX}{}", hex::encode(&all)))
    }

    pub fn open(&self, stored: &str) -> Result<String, String> {
        let Some(hex) = stored.strip_prefix(SEALED_PREFIX) else {
            return Ok(stored.to_string());
        };
        let key = self
            .key
            .as_ref()
            .ok_or("an upstream key is encrypted but OBLETH_ENCRYPTION_KEY is not set")?;
        let bytes = hex::decode(hex).map_err(|_| "sealed upstream key is not hex")?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err("sealed upstream key is truncated".into());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            key,
            Some(nonce),
            b"obleth-upstream-key",
            sealed,
            tag,
        )
        .map_err(|_| {
            "cannot open a sealed upstream key: wrong OBLETH_ENCRYPTION_KEY?".to_string()
        })?;
        String::from_utf8(plain).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_round_trip_and_hide_the_secret() {
        let c = UpstreamKeyCipher::new(Some("operator secret"));
        let sealed = c.seal("sk-upstream-123").unwrap();
        assert!(sealed.starts_with(SEALED_PREFIX));
        assert!(!sealed.contains("sk-upstream"));
        assert_ne!(
            sealed,
            c.seal("sk-upstream-123").unwrap(),
            "fresh nonce each time"
        );
        assert_eq!(c.open(&sealed).unwrap(), "sk-upstream-123");
        assert!(UpstreamKeyCipher::new(Some("other")).open(&sealed).is_err());
        assert!(UpstreamKeyCipher::new(None).open(&sealed).is_err());
    }

    #[test]
    fn without_a_key_values_are_stored_as_given() {
        let c = UpstreamKeyCipher::new(None);
        assert_eq!(c.seal("sk-1").unwrap(), "sk-1");
        assert_eq!(c.open("sk-1").unwrap(), "sk-1");
    }
}
