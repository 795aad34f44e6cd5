//! Dashboard users: the initial admin created on first start, and argon2id
//! password hashing (argon2 is for human passwords only; API keys are
//! high-entropy tokens looked up by SHA-256).

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::store::{AuditEvent, NewUser, Store, StoreError};

/// The name of the first administrator.
pub const INITIAL_ADMIN: &str = "admin";

/// A random token of `bytes` random bytes, base64url without padding.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

/// Hashes a password with argon2id (the crate's defaults: m=19 MiB, t=2,
/// p=1, OWASP's recommendation) into a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Creates the initial `admin` user with a random one-time password if the
/// database has no user yet. Returns the password, to be shown once; `None`
/// if users exist (or another instance created the admin first).
pub async fn ensure_initial_admin(
    store: &dyn Store,
) -> Result<Option<Zeroizing<String>>, StoreError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let password = Zeroizing::new(random_token(18));
    let hash = hash_password(&password)
        .map_err(|e| StoreError::Database(format!("hashing the password: {e}")))?;
    let user = NewUser {
        id: random_token(12),
        username: INITIAL_ADMIN.into(),
        password_hash: hash,
        role: "admin".into(),
        must_change_password: true,
    };
    let event = AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: "system".into(),
        action: "user.create".into(),
        subject: INITIAL_ADMIN.into(),
        details: serde_json::json!({"role": "admin", "initial": true}),
    };
    match store.create_user(user, event).await {
        Ok(()) => Ok(Some(password)),
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("s3cret-pass").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&hash).unwrap();
        assert!(Argon2::default()
            .verify_password(b"s3cret-pass", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());
    }
}
