//! Orgs and their API keys, in the state database next to the projects.
//!
//! A key is `sl-` followed by 64 random hex digits (256 bits from the
//! operating system's generator: the random digits of three v4 UUIDs, so no
//! further dependency).
//! Only its SHA-256 digest is stored, with its first characters to tell keys
//! apart in listings; the key itself is shown once, when it is created.

use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::registry::ProjectRegistry;

/// Characters of a key kept to tell keys apart (`sl-` and 8 hex digits).
const PREFIX_LEN: usize = 11;

/// One org.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Org {
    /// Org UUID.
    pub id: String,
    /// Unique name.
    pub name: String,
}

/// An API key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKeyInfo {
    /// Key id (to revoke it).
    pub id: String,
    /// The org the key acts for.
    pub org: Org,
    /// The key's first characters.
    pub prefix: String,
    /// RFC 3339 creation time.
    pub created: String,
    /// RFC 3339 revocation time, if revoked.
    pub revoked: Option<String>,
}

fn digest(key: &str) -> String {
    let hash = Sha256::digest(key.as_bytes());
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn new_key() -> String {
    let random: String = (0..3)
        .map(|_| Uuid::new_v4().simple().to_string())
        .collect::<String>()
        .chars()
        // Drop the version and variant digits of each UUID (not random).
        .enumerate()
        .filter(|(i, _)| !matches!(i % 32, 12 | 16))
        .map(|(_, c)| c)
        .take(64)
        .collect();
    format!("sl-{random}")
}

impl ProjectRegistry {
    /// The org named `name`, created when missing.
    pub fn org_get_or_create(&self, name: &str) -> Result<Org> {
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(Error::InvalidArgument(format!(
                "org name `{}` must be non-empty, without control characters",
                name.escape_debug()
            )));
        }
        self.connection().execute(
            "INSERT OR IGNORE INTO orgs (id, name, created) VALUES (?1, ?2, ?3)",
            params![Uuid::new_v4().to_string(), name, self.now_rfc3339()],
        )?;
        Ok(self.connection().query_row(
            "SELECT id, name FROM orgs WHERE name = ?1",
            params![name],
            |r| {
                Ok(Org {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            },
        )?)
    }

    /// The org with id `id`.
    pub fn org(&self, id: &str) -> Result<Option<Org>> {
        Ok(self
            .connection()
            .query_row(
                "SELECT id, name FROM orgs WHERE id = ?1",
                params![id],
                |r| {
                    Ok(Org {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Create a key for the org named `org_name` (created when missing).
    /// Returns the key, which is not stored and cannot be shown again.
    pub fn create_api_key(&self, org_name: &str) -> Result<(String, ApiKeyInfo)> {
        let org = self.org_get_or_create(org_name)?;
        let key = new_key();
        let info = ApiKeyInfo {
            id: Uuid::new_v4().to_string(),
            org,
            prefix: key[..PREFIX_LEN].to_string(),
            created: self.now_rfc3339(),
            revoked: None,
        };
        self.connection().execute(
            "INSERT INTO api_keys (id, org_id, digest, prefix, created) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![info.id, info.org.id, digest(&key), info.prefix, info.created],
        )?;
        Ok((key, info))
    }

    /// The org a key acts for, or `None` for an unknown or revoked key.
    pub fn authenticate(&self, key: &str) -> Result<Option<Org>> {
        Ok(self
            .connection()
            .query_row(
                "SELECT o.id, o.name FROM api_keys k JOIN orgs o ON o.id = k.org_id
                 WHERE k.digest = ?1 AND k.revoked IS NULL",
                params![digest(key.trim())],
                |r| {
                    Ok(Org {
                        id: r.get(0)?,
                        name: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every key, newest first.
    pub fn list_api_keys(&self) -> Result<Vec<ApiKeyInfo>> {
        let mut stmt = self.connection().prepare(
            "SELECT k.id, o.id, o.name, k.prefix, k.created, k.revoked
             FROM api_keys k JOIN orgs o ON o.id = k.org_id ORDER BY k.created DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ApiKeyInfo {
                id: r.get(0)?,
                org: Org {
                    id: r.get(1)?,
                    name: r.get(2)?,
                },
                prefix: r.get(3)?,
                created: r.get(4)?,
                revoked: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revoke the key with id `id` (or whose prefix is `id`).
    pub fn revoke_api_key(&self, id: &str) -> Result<ApiKeyInfo> {
        let matching: Vec<ApiKeyInfo> = self
            .list_api_keys()?
            .into_iter()
            .filter(|k| k.id == id || k.prefix == id)
            .collect();
        let [key] = matching.as_slice() else {
            return Err(Error::InvalidArgument(format!(
                "{} API keys match `{id}`; give a key id from `spanlake apikey list`",
                matching.len()
            )));
        };
        self.connection().execute(
            "UPDATE api_keys SET revoked = ?2 WHERE id = ?1 AND revoked IS NULL",
            params![key.id, self.now_rfc3339()],
        )?;
        Ok(key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_authenticate_their_org_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let (key, info) = reg.create_api_key("acme").unwrap();
        assert!(key.starts_with("sl-") && key.len() == 67, "{key}");
        assert!(key[3..].chars().all(|c| c.is_ascii_hexdigit()));
        let (other, _) = reg.create_api_key("acme").unwrap();
        assert_ne!(key, other);
        assert_eq!(reg.authenticate(&key).unwrap().unwrap().name, "acme");
        assert_eq!(
            reg.authenticate(&format!("{key}\n")).unwrap(),
            Some(info.org.clone())
        );
        assert_eq!(reg.authenticate("sl-0000").unwrap(), None);
        // Only the digest is stored.
        let stored: i64 = reg
            .connection()
            .query_row(
                "SELECT count(*) FROM api_keys WHERE digest = ?1 OR prefix = ?1",
                params![key],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stored, 0);
        reg.revoke_api_key(&info.id).unwrap();
        assert_eq!(reg.authenticate(&key).unwrap(), None);
        assert!(reg.authenticate(&other).unwrap().is_some());
    }

    #[test]
    fn projects_are_per_org() {
        let dir = tempfile::tempdir().unwrap();
        let reg = ProjectRegistry::open(&dir.path().join("state.db")).unwrap();
        let a = reg.org_get_or_create("a").unwrap();
        let b = reg.org_get_or_create("b").unwrap();
        let pa = reg.get_or_create_in_org(&a.id, "shared").unwrap();
        assert_eq!(reg.get_or_create_in_org(&a.id, "shared").unwrap(), pa);
        let pb = reg.get_or_create_in_org(&b.id, "shared").unwrap();
        assert_ne!(pa.id, pb.id);
        assert!(matches!(
            reg.resolve_in_org(&a.id, &pb.id),
            Err(Error::UnknownProject(_))
        ));
        assert_eq!(reg.list_in_org(&b.id).unwrap(), vec![pb.clone()]);
        // The CLI (all orgs) needs the id when the name is ambiguous.
        assert!(matches!(
            reg.resolve("shared"),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(reg.resolve(&pb.id).unwrap(), pb);
    }
}
