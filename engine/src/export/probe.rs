//! `automation test` of an export: assume its role, write a small probe
//! object under its path, read it back, delete it; each step reported with
//! the likely fix of a failure.

use object_store::aws::AwsCredentialProvider;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::state::Automation;
use crate::store::Store;

use super::target::{role_provider, target_with_credentials};
use super::{ExportConfig, RawExportConfig, automation_external_id};

/// One step of `test`.
#[derive(Debug, Clone, Serialize)]
pub struct TestStep {
    /// `assume` (with a role), `connect`, `write`, `read`, `delete`.
    pub step: &'static str,
    /// Whether it worked.
    pub ok: bool,
    /// What happened, and for a failure the likely fix.
    pub message: String,
}

fn likely_fix(error: &object_store::Error) -> &'static str {
    let text = error.to_string();
    if text.contains("NoSuchBucket") || text.contains("does not exist") {
        "check the bucket name in the export path; the bucket must exist"
    } else if text.contains("AccessDenied") || text.contains("403") || text.contains("Forbidden") {
        "the credentials lack permission: allow s3:PutObject, s3:GetObject and s3:DeleteObject on the prefix (and check the role's trust policy and external id)"
    } else if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") {
        "the access key is unknown or the secret is wrong"
    } else {
        "check the endpoint, the network and the credentials"
    }
}

/// [`test_export_target`] for a stored export automation: its configuration
/// and the external id it presents (the same as its runs).
pub async fn test_export_automation(
    store: &Store,
    automation: &Automation,
) -> Result<Vec<TestStep>> {
    let raw: RawExportConfig = serde_json::from_value(automation.config.clone())
        .map_err(|e| Error::Internal(format!("stored export config: {e}")))?;
    let external_id = automation_external_id(store, automation)?;
    Ok(test_export_target(&raw.validate()?, Some(&external_id)).await)
}

/// Check that an export can write to its destination: assume its role
/// (with `external_id`, when a `role_arn` is set), write a small probe object
/// under the export path, read it back, delete it. Each step is reported; a
/// failure names the step, the key and the likely fix.
pub async fn test_export_target(config: &ExportConfig, external_id: Option<&str>) -> Vec<TestStep> {
    let mut steps = Vec::new();
    let mut credentials: Option<AwsCredentialProvider> = None;
    if let Some(provider) = role_provider(config, external_id) {
        let assumed = match provider {
            Ok(provider) => provider.credential().await.map(|_| provider),
            Err(e) => Err(e),
        };
        match assumed {
            Ok(provider) => {
                steps.push(TestStep {
                    step: "assume",
                    ok: true,
                    message: match provider.external_id() {
                        Some(id) => format!(
                            "assumed role `{}` with external id `{id}`",
                            provider.role_arn()
                        ),
                        None => format!("assumed role `{}`", provider.role_arn()),
                    },
                });
                credentials = Some(provider as AwsCredentialProvider);
            }
            Err(e) => {
                steps.push(TestStep {
                    step: "assume",
                    ok: false,
                    message: e.to_string(),
                });
                return steps;
            }
        }
    }
    let target = match target_with_credentials(config, credentials) {
        Ok(target) => {
            steps.push(TestStep {
                step: "connect",
                ok: true,
                message: format!("export path `{}` resolved", config.export_path),
            });
            target
        }
        Err(e) => {
            steps.push(TestStep {
                step: "connect",
                ok: false,
                message: e.to_string(),
            });
            return steps;
        }
    };
    let name = format!("_spanlake_probe_{}.txt", uuid::Uuid::now_v7());
    let key = if target.prefix.as_ref().is_empty() {
        Path::from(name)
    } else {
        Path::from(format!("{}/{name}", target.prefix))
    };
    let body = b"spanlake export test probe\n".to_vec();
    let failed = |step: &'static str, e: &object_store::Error| TestStep {
        step,
        ok: false,
        message: format!(
            "{step} `{key}` failed: {}; {}",
            crate::sink::summary::store_error_summary(e),
            likely_fix(e)
        ),
    };
    if let Err(e) = target.store.put(&key, PutPayload::from(body.clone())).await {
        steps.push(failed("write", &e));
        return steps;
    }
    steps.push(TestStep {
        step: "write",
        ok: true,
        message: format!("wrote `{key}` ({} bytes)", body.len()),
    });
    match target.store.get(&key).await {
        Ok(found) => match found.bytes().await {
            Ok(read) if read.as_ref() == body.as_slice() => steps.push(TestStep {
                step: "read",
                ok: true,
                message: "read it back intact".to_string(),
            }),
            Ok(_) => steps.push(TestStep {
                step: "read",
                ok: false,
                message: format!("`{key}` came back different from what was written"),
            }),
            Err(e) => steps.push(failed("read", &e)),
        },
        Err(e) => steps.push(failed("read", &e)),
    }
    match target.store.delete(&key).await {
        Ok(()) => steps.push(TestStep {
            step: "delete",
            ok: true,
            message: "deleted the probe".to_string(),
        }),
        Err(e) => steps.push(failed("delete", &e)),
    }
    steps
}
