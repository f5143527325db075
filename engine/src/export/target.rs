//! Where an export writes: its object store and prefix, with the role's
//! credentials when it has one.

use std::sync::Arc;

use object_store::aws::AwsCredentialProvider;

use super::ExportConfig;
use crate::error::{Error, Result};
use crate::sink::credentials::{AssumeRoleOptions, AssumeRoleProvider};
use crate::sink::{ExportTarget, TargetOptions};
use crate::state::Automation;
use crate::store::Store;

/// The object store and prefix of an export. With a `role_arn` (and an S3
/// path), its credentials come from STS AssumeRole with `external_id` (see
/// [`crate::sink::credentials::external_id`]; none for one-shot exports), renewed
/// before they expire.
pub fn export_target(config: &ExportConfig, external_id: Option<&str>) -> Result<ExportTarget> {
    let credentials = match role_provider(config, external_id) {
        Some(provider) => Some(provider.map_err(|e| Error::InvalidArgument(e.to_string()))?),
        None => None,
    };
    target_with_credentials(config, credentials.map(|p| p as AwsCredentialProvider))
}

/// [`export_target`], with the role (if any) assumed at once: a refused role
/// fails here, with its likely fix, rather than as a failed write.
pub(super) async fn export_target_assumed(
    config: &ExportConfig,
    external_id: Option<&str>,
) -> Result<ExportTarget> {
    let credentials = match role_provider(config, external_id) {
        Some(provider) => {
            let provider = provider.map_err(|e| Error::InvalidArgument(e.to_string()))?;
            provider
                .credential()
                .await
                .map_err(|e| Error::Credentials {
                    message: e.to_string(),
                    retryable: e.is_transient(),
                })?;
            Some(provider as AwsCredentialProvider)
        }
        None => None,
    };
    target_with_credentials(config, credentials)
}

/// The role provider of an export with a `role_arn` and an S3 path.
pub(super) fn role_provider(
    config: &ExportConfig,
    external_id: Option<&str>,
) -> Option<std::result::Result<Arc<AssumeRoleProvider>, crate::sink::credentials::AssumeRoleError>>
{
    let role_arn = config.role_arn.as_deref()?;
    let scheme = config.export_path.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("s3" | "s3a")) {
        return None;
    }
    Some(
        AssumeRoleProvider::new(AssumeRoleOptions {
            role_arn: role_arn.to_string(),
            external_id: external_id.map(str::to_string),
            endpoint: config.endpoint.clone(),
            ..AssumeRoleOptions::default()
        })
        .map(Arc::new),
    )
}

pub(super) fn target_with_credentials(
    config: &ExportConfig,
    credentials: Option<AwsCredentialProvider>,
) -> Result<ExportTarget> {
    let options = TargetOptions {
        endpoint: config.endpoint.clone(),
        credentials,
        ..TargetOptions::default()
    };
    crate::sink::target_from_url(&config.export_path, &options)
        .map_err(|e| Error::InvalidArgument(format!("export_path: {e}")))
}

/// The external id an export presents when it assumes its role:
/// `spanlake:<org of its project>:<project>:<automation>`.
pub fn automation_external_id(store: &Store, automation: &Automation) -> Result<String> {
    let project = store.with_registry(|r| r.get(&automation.project_id))?;
    Ok(crate::sink::credentials::external_id(
        &project.org_id,
        &project.id,
        &automation.id,
    ))
}

/// Where the sink of an export writes, as a plan carries it to the
/// executors of a cluster: the export's configuration (no secret: keys and
/// tokens come from each process's own environment) and the external id of
/// its role. Each executor opens the target itself, assuming the role.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportSinkTarget {
    /// The export's configuration as stored.
    pub config: super::RawExportConfig,
    /// The external id its role is assumed with.
    pub external_id: Option<String>,
}

impl ExportSinkTarget {
    /// The target [`crate::sink::SinkTarget::to_bytes`] wrote (a
    /// [`crate::cluster::TargetDecoder`]).
    pub fn decode(bytes: &[u8]) -> datafusion::error::Result<Arc<dyn crate::sink::SinkTarget>> {
        let target: Self = serde_json::from_slice(bytes).map_err(|e| {
            datafusion::error::DataFusionError::Internal(format!(
                "an export's target does not decode: {e}"
            ))
        })?;
        Ok(Arc::new(target))
    }
}

impl crate::sink::SinkTarget for ExportSinkTarget {
    fn open(
        &self,
    ) -> futures::future::BoxFuture<
        'static,
        datafusion::error::Result<(ExportTarget, crate::sink::SinkConfig)>,
    > {
        let this = self.clone();
        Box::pin(async move {
            let external = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
            let config = this.config.validate().map_err(external)?;
            let target = export_target_assumed(&config, this.external_id.as_deref())
                .await
                .map_err(external)?;
            Ok((target, config.sink))
        })
    }

    fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an export's target serialises")
    }
}
