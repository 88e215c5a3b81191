//! API keys: only their SHA-256 hashes are configured; a presented key is hashed and compared
//! with every configured hash in constant time. A job belongs to the key that submitted it.

use axum::http::HeaderMap;
use job_model::Owner;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// The accepted keys, as hashes.
#[derive(Clone)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.hashes.len())
    }
}

/// The SHA-256 of a key, in lowercase hex: what the operator configures.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl ApiKeys {
    /// From hex SHA-256 hashes (comma or whitespace separated).
    ///
    /// # Errors
    /// A line naming the entry that is not 64 hex digits, or when there is none.
    pub fn from_hashes(text: &str) -> Result<Self, String> {
        let mut hashes = Vec::new();
        for (i, h) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .enumerate()
        {
            let bytes = hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok());
            match bytes {
                Some(b) => hashes.push(b),
                None => {
                    return Err(format!(
                        "API key hash #{} is not 64 hex digits (a SHA-256); make one with \
                         `seren-coordinator hash-key`",
                        i + 1
                    ))
                }
            }
        }
        if hashes.is_empty() {
            return Err("no API key hash configured; set SEREN_API_KEY_SHA256".into());
        }
        Ok(Self { hashes })
    }

    /// The owner for `key`, if it is one of ours. Compares against every hash, always.
    pub fn verify(&self, key: &str) -> Option<Owner> {
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = subtle::Choice::from(0);
        for h in &self.hashes {
            found |= h.ct_eq(&presented);
        }
        bool::from(found).then(|| Owner::of_api_key(key))
    }

    /// The owner presenting the request's key (`Authorization: Bearer` or `x-api-key`).
    pub fn caller(&self, headers: &HeaderMap) -> Option<Owner> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let key = bearer.or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })?;
        if key.is_empty() {
            return None;
        }
        self.verify(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_keys_pass_and_owners_differ() {
        let keys = ApiKeys::from_hashes(&format!("{}, {}", hash_key("alpha"), hash_key("beta")))
            .expect("hashes");
        let a = keys.verify("alpha").expect("alpha");
        let b = keys.verify("beta").expect("beta");
        assert_ne!(a, b);
        assert_eq!(a, Owner::of_api_key("alpha"));
        assert!(keys.verify("gamma").is_none());
        assert!(keys.verify("").is_none());
        assert!(format!("{keys:?}").contains("2 keys"));
    }

    #[test]
    fn bad_hash_configuration_is_named() {
        assert!(ApiKeys::from_hashes("").is_err());
        let err = ApiKeys::from_hashes(&format!("{},nothex", hash_key("a"))).expect_err("bad");
        assert!(err.contains("#2"), "{err}");
    }
}
