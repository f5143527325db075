//! The IAM role an S3 export assumes, written out for the person who must
//! create it: the external id spanlake presents, the trust policy that lets
//! spanlake's identity assume the role with that id, and the permissions
//! policy the export needs under its bucket and prefix.
//!
//! ```text
//!  export_path s3://bucket/prefix ─┐
//!  org, project, automation id ────┼─► RolePolicy { external_id, trust_policy, permissions_policy }
//!  principal (who assumes it) ─────┘
//! ```
//!
//! A saved export presents exactly `spanlake:<org_id>:<project_id>:<automation_id>`,
//! so its trust policy pins that value with `StringEquals`. An export not
//! saved yet has no id: its test presents
//! `spanlake:<org_id>:<project_id>:`[`UNSAVED_AUTOMATION_ID`], and the policy
//! written for it matches every export of the project with `StringLike`
//! (`spanlake:<org_id>:<project_id>:*`), which covers the test and the export
//! once saved. The permissions are those a run uses: put (multipart
//! included), get (the manifest read back, recovery), delete (a failed run's
//! files, the test's probe) and list under the prefix (the cleanup of a
//! crashed run); nothing outside the prefix.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::sink::credentials::external_id;

/// The automation id an unsaved export's test presents in its external id:
/// no saved automation has it (saved ids are UUIDs).
pub const UNSAVED_AUTOMATION_ID: &str = "unsaved";

/// The principal written into a trust policy when the caller does not say
/// which identity runs spanlake: a placeholder to replace, never a real ARN.
pub const PRINCIPAL_PLACEHOLDER: &str = "arn:aws:iam::<ACCOUNT_ID>:user/<SPANLAKE_USER>";

/// What a role for an export must allow, ready to paste into IAM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolePolicy {
    /// The external id the export presents (exact), or the pattern every
    /// export of the project matches (`...:*`, for an unsaved export).
    pub external_id: String,
    /// Whether `external_id` is the exact value (a saved export) rather
    /// than a pattern.
    pub external_id_exact: bool,
    /// The destination bucket.
    pub bucket: String,
    /// The key prefix under the bucket, without a trailing `/` (may be empty).
    pub prefix: String,
    /// Who may assume the role (the identity `spanlake serve` runs as).
    pub principal: String,
    /// The role's trust policy (`AssumeRolePolicyDocument`).
    pub trust_policy: serde_json::Value,
    /// The permissions policy to attach to the role.
    pub permissions_policy: serde_json::Value,
    /// What to do with the two documents.
    pub notes: Vec<String>,
}

/// The bucket and prefix of an `s3://` (or `s3a://`) export path.
fn bucket_and_prefix(export_path: &str) -> Result<(String, String)> {
    let rest = export_path
        .strip_prefix("s3://")
        .or_else(|| export_path.strip_prefix("s3a://"))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "export_path: a role is assumed only for `s3://bucket/prefix` exports, not `{export_path}`"
            ))
        })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "export_path: `{export_path}` names no bucket; use `s3://bucket/prefix`"
        )));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// The ARN partition of `principal` (`aws`, `aws-cn`, `aws-us-gov`), `aws`
/// for the placeholder.
fn partition_of(principal: &str) -> &str {
    principal
        .strip_prefix("arn:")
        .and_then(|rest| rest.split(':').next())
        .filter(|p| !p.is_empty() && !p.contains('<'))
        .unwrap_or("aws")
}

/// The role an export to `export_path` needs. `automation_id` is the saved
/// export's id (`None` before it is saved); `principal` the ARN of the
/// identity that assumes the role ([`PRINCIPAL_PLACEHOLDER`] when `None`).
pub fn role_policy(
    org_id: &str,
    project_id: &str,
    automation_id: Option<&str>,
    export_path: &str,
    principal: Option<&str>,
) -> Result<RolePolicy> {
    let (bucket, prefix) = bucket_and_prefix(export_path)?;
    let principal = match principal.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) if p.starts_with("arn:") && p.split(':').count() >= 6 => p.to_string(),
        Some(p) => {
            return Err(Error::InvalidArgument(format!(
                "principal: `{p}` is not an IAM ARN, e.g. `arn:aws:iam::123456789012:user/spanlake`"
            )));
        }
        None => PRINCIPAL_PLACEHOLDER.to_string(),
    };
    let partition = partition_of(&principal).to_string();
    let (external, exact) = match automation_id {
        Some(id) => (external_id(org_id, project_id, id), true),
        None => (external_id(org_id, project_id, "*"), false),
    };
    let condition = if exact {
        serde_json::json!({ "StringEquals": { "sts:ExternalId": external } })
    } else {
        serde_json::json!({ "StringLike": { "sts:ExternalId": external } })
    };
    let trust_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": { "AWS": principal },
            "Action": "sts:AssumeRole",
            "Condition": condition,
        }],
    });
    let objects = if prefix.is_empty() {
        format!("arn:{partition}:s3:::{bucket}/*")
    } else {
        format!("arn:{partition}:s3:::{bucket}/{prefix}/*")
    };
    let mut list = serde_json::json!({
        "Sid": "ListThePrefix",
        "Effect": "Allow",
        "Action": "s3:ListBucket",
        "Resource": format!("arn:{partition}:s3:::{bucket}"),
    });
    if !prefix.is_empty() {
        list["Condition"] = serde_json::json!({
            "StringLike": { "s3:prefix": [prefix.clone(), format!("{prefix}/*")] }
        });
    }
    let permissions_policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WriteReadDeleteExportedFiles",
                "Effect": "Allow",
                "Action": [
                    "s3:PutObject",
                    "s3:GetObject",
                    "s3:DeleteObject",
                    "s3:AbortMultipartUpload",
                    "s3:ListMultipartUploadParts",
                ],
                "Resource": objects,
            },
            list,
        ],
    });
    let mut notes = vec![
        "create the role with the trust policy, attach the permissions policy, and give its ARN as `role_arn`".to_string(),
    ];
    if principal == PRINCIPAL_PLACEHOLDER {
        notes.push(format!(
            "replace `{PRINCIPAL_PLACEHOLDER}` with the ARN of the identity `spanlake serve` runs as (the user of its AWS_ACCESS_KEY_ID, or its instance role)"
        ));
    }
    if exact {
        notes.push(format!(
            "the trust policy requires exactly this export's external id `{external}`"
        ));
    } else {
        notes.push(format!(
            "the export is not saved yet, so the trust policy matches every export of this project (`{external}`); after saving, pin it to the export's own id with StringEquals"
        ));
    }
    Ok(RolePolicy {
        external_id: external,
        external_id_exact: exact,
        bucket,
        prefix,
        principal,
        trust_policy,
        permissions_policy,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_export_pins_its_external_id_and_its_prefix() {
        let policy = role_policy(
            "o1",
            "p1",
            Some("a1"),
            "s3://logs-bucket/team/spans/",
            Some("arn:aws:iam::123456789012:user/spanlake"),
        )
        .unwrap();
        assert_eq!(policy.external_id, "spanlake:o1:p1:a1");
        assert!(policy.external_id_exact);
        assert_eq!(
            (policy.bucket.as_str(), policy.prefix.as_str()),
            ("logs-bucket", "team/spans")
        );
        let statement = &policy.trust_policy["Statement"][0];
        assert_eq!(
            statement["Condition"]["StringEquals"]["sts:ExternalId"],
            "spanlake:o1:p1:a1"
        );
        assert_eq!(
            statement["Principal"]["AWS"],
            "arn:aws:iam::123456789012:user/spanlake"
        );
        let statements = &policy.permissions_policy["Statement"];
        assert_eq!(
            statements[0]["Resource"],
            "arn:aws:s3:::logs-bucket/team/spans/*"
        );
        assert_eq!(statements[1]["Resource"], "arn:aws:s3:::logs-bucket");
        assert_eq!(
            statements[1]["Condition"]["StringLike"]["s3:prefix"],
            serde_json::json!(["team/spans", "team/spans/*"])
        );
        assert!(!policy.notes.iter().any(|n| n.contains("replace")));
    }

    #[test]
    fn an_unsaved_export_matches_the_project_and_its_test_id() {
        let policy = role_policy("o1", "p1", None, "s3://b", None).unwrap();
        assert!(!policy.external_id_exact);
        let pattern =
            policy.trust_policy["Statement"][0]["Condition"]["StringLike"]["sts:ExternalId"]
                .as_str()
                .unwrap()
                .to_string();
        assert_eq!(pattern, "spanlake:o1:p1:*");
        // The id an unsaved test presents is covered by the pattern.
        let presented = external_id("o1", "p1", UNSAVED_AUTOMATION_ID);
        assert!(presented.starts_with(pattern.trim_end_matches('*')));
        assert_eq!(policy.principal, PRINCIPAL_PLACEHOLDER);
        assert!(policy.notes.iter().any(|n| n.contains("replace")));
        // No prefix: the whole bucket, and no prefix condition on listing.
        let statements = &policy.permissions_policy["Statement"];
        assert_eq!(statements[0]["Resource"], "arn:aws:s3:::b/*");
        assert!(statements[1].get("Condition").is_none());
    }

    #[test]
    fn the_partition_follows_the_principal() {
        let policy = role_policy(
            "o",
            "p",
            Some("a"),
            "s3://b/x",
            Some("arn:aws-cn:iam::123456789012:role/r"),
        )
        .unwrap();
        assert_eq!(
            policy.permissions_policy["Statement"][0]["Resource"],
            "arn:aws-cn:s3:::b/x/*"
        );
    }

    #[test]
    fn refuses_what_no_role_applies_to() {
        for path in ["file:///tmp/x", "gs://b/x", "s3:///x"] {
            let error = role_policy("o", "p", None, path, None).unwrap_err();
            assert!(error.to_string().contains("export_path"), "{error}");
        }
        let error = role_policy("o", "p", None, "s3://b/x", Some("spanlake-user")).unwrap_err();
        assert!(error.to_string().contains("principal"), "{error}");
    }
}
