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

/// The cloud an export path is on, for the likely fix of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    S3,
    Gcs,
    Azure,
    Other,
}

/// The backend of `export_path` and the bucket or container it names
/// (`abfss://container@account…` names it before the `@`).
fn destination_of(export_path: &str) -> (Backend, Option<String>) {
    let Ok(url) = url::Url::parse(export_path) else {
        return (Backend::Other, None);
    };
    let host = url.host_str().filter(|h| !h.is_empty()).map(str::to_owned);
    match url.scheme() {
        "s3" | "s3a" => (Backend::S3, host),
        "gs" => (Backend::Gcs, host),
        "az" | "abfs" | "abfss" | "azure" | "adl" => {
            let container = if url.username().is_empty() {
                host
            } else {
                Some(url.username().to_owned())
            };
            (Backend::Azure, container)
        }
        _ => (Backend::Other, None),
    }
}

/// What to check after a failed probe request, from the destination's
/// status and error code (its reply is read here, never shown).
fn likely_fix(backend: Backend, error: &object_store::Error) -> &'static str {
    use crate::sink::summary::{answered_status, aws_error_code};
    let text = crate::error::error_chain(error);
    let code = aws_error_code(&text).unwrap_or_default();
    let status = answered_status(error);
    let missing_place = matches!(
        code.as_str(),
        "NoSuchBucket" | "ContainerNotFound" | "ContainerBeingDeleted"
    ) || text.contains("does not exist");
    match backend {
        Backend::Gcs if missing_place => {
            "check the bucket name in the export path; the bucket must exist"
        }
        Backend::Gcs if status == Some(401) || matches!(error, object_store::Error::Unauthenticated { .. }) => {
            "the credentials were refused: check the service-account key (`GOOGLE_SERVICE_ACCOUNT` file or `GOOGLE_SERVICE_ACCOUNT_KEY`) or the application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`)"
        }
        Backend::Gcs if status == Some(403) => {
            "the service account lacks permission: grant it storage.objects.create, get and delete on the bucket (e.g. `roles/storage.objectUser`)"
        }
        Backend::Azure if missing_place => {
            "check the container name in the export path; the container must exist in the storage account"
        }
        Backend::Azure
            // A bad signature: `AuthenticationFailed` from Azure,
            // `AuthorizationFailure` from Azurite, both "Server failed to
            // authenticate the request".
            if matches!(code.as_str(), "AuthenticationFailed" | "InvalidAuthenticationInfo")
                || text.contains("failed to authenticate")
                || status == Some(401) =>
        {
            "the credentials were refused: check the account key (`AZURE_STORAGE_ACCOUNT_KEY`), the SAS token (`AZURE_STORAGE_SAS_KEY`) or the connection string (`AZURE_STORAGE_CONNECTION_STRING`), and that it is the key of the account in the URL"
        }
        Backend::Azure if status == Some(403) => {
            "the credentials lack permission: a SAS token needs the write, read and delete permissions on the container; a role needs `Storage Blob Data Contributor`"
        }
        Backend::Azure | Backend::Gcs => "check the endpoint, the network and the credentials",
        Backend::S3 | Backend::Other => {
            if text.contains("NoSuchBucket") || text.contains("does not exist") {
                "check the bucket name in the export path; the bucket must exist"
            } else if text.contains("AccessDenied")
                || text.contains("403")
                || text.contains("Forbidden")
            {
                "the credentials lack permission: allow s3:PutObject, s3:GetObject and s3:DeleteObject on the prefix (and check the role's trust policy and external id)"
            } else if text.contains("InvalidAccessKeyId") || text.contains("SignatureDoesNotMatch") {
                "the access key is unknown or the secret is wrong"
            } else {
                "check the endpoint, the network and the credentials"
            }
        }
    }
}

/// The likely fix when the store cannot even be built (a credential that
/// does not parse, an unknown URL form): nothing was sent yet.
fn connect_fix(backend: Backend) -> &'static str {
    match backend {
        Backend::Gcs => {
            "check the service-account key (`GOOGLE_SERVICE_ACCOUNT` names a key file, `GOOGLE_SERVICE_ACCOUNT_KEY` holds one) or `GOOGLE_APPLICATION_CREDENTIALS`: it must be a JSON key of a service account"
        }
        Backend::Azure => {
            "check the account (`AZURE_STORAGE_ACCOUNT_NAME`) and its key, SAS token or connection string (`AZURE_STORAGE_ACCOUNT_KEY`, `AZURE_STORAGE_SAS_KEY`, `AZURE_STORAGE_CONNECTION_STRING`)"
        }
        Backend::S3 | Backend::Other => "check the export path and the credentials",
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
    let (backend, place) = destination_of(&config.export_path);
    let place = match (backend, place) {
        (Backend::Azure, Some(name)) => format!(" in container `{name}`"),
        (Backend::S3 | Backend::Gcs, Some(name)) => format!(" in bucket `{name}`"),
        _ => String::new(),
    };
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
                message: format!("{e}; {}", connect_fix(backend)),
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
            "{step} `{key}`{place} failed: {}; {}",
            crate::sink::summary::store_error_summary(e),
            likely_fix(backend, e)
        ),
    };
    if let Err(e) = target.store.put(&key, PutPayload::from(body.clone())).await {
        steps.push(failed("write", &e));
        return steps;
    }
    steps.push(TestStep {
        step: "write",
        ok: true,
        message: format!("wrote `{key}`{place} ({} bytes)", body.len()),
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
