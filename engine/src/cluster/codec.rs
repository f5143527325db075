//! The plan codec of a cluster: Ballista's own nodes (shuffles) plus ours,
//! the fold ([`crate::store::resolve`]), the sink ([`SinkExec`]), BTQL's
//! functions with their parameters ([`spanlake_dsl::codec`]) and the set of
//! ids to fold. Scheduler, executors and clients all use this one codec
//! (the same binary in every role), so a plan decodes as it was encoded.
//!
//! Our nodes are tagged: `spanlake-fold:` or `spanlake-sink:` then JSON;
//! anything else is Ballista's protobuf.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use crate::sink::{SinkExec, SinkTarget};
use crate::store::resolve::codec as fold;

const FOLD: &[u8] = b"spanlake-fold:";
const SINK: &[u8] = b"spanlake-sink:";

/// Turns the bytes of a [`SinkTarget`] back into one.
pub type TargetDecoder = fn(&[u8]) -> Result<Arc<dyn SinkTarget>>;

/// See the module docs.
#[derive(Debug)]
pub struct SpanlakeCodec {
    ballista: BallistaPhysicalExtensionCodec,
    targets: TargetDecoder,
}

impl SpanlakeCodec {
    /// The codec, with the sink's targets decoded by `targets` (the layer
    /// that defines them, above this one: exports).
    pub fn new(targets: TargetDecoder) -> Self {
        Self {
            ballista: BallistaPhysicalExtensionCodec::default(),
            targets,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Sink {
    /// The target's own bytes ([`SinkTarget::to_bytes`]), as text.
    target: String,
    run_id: String,
    json_columns: Vec<String>,
}

fn one_input(inputs: &[Arc<dyn ExecutionPlan>], node: &str) -> Result<Arc<dyn ExecutionPlan>> {
    match inputs {
        [input] => Ok(Arc::clone(input)),
        _ => Err(DataFusionError::Internal(format!(
            "{node} takes one input, not {}",
            inputs.len()
        ))),
    }
}

impl PhysicalExtensionCodec for SpanlakeCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(bytes) = buf.strip_prefix(FOLD) {
            return fold::decode_plan(bytes, one_input(inputs, "the fold")?);
        }
        if let Some(bytes) = buf.strip_prefix(SINK) {
            let sink: Sink = serde_json::from_slice(bytes)
                .map_err(|e| DataFusionError::Internal(format!("the sink does not decode: {e}")))?;
            return Ok(Arc::new(SinkExec::new(
                one_input(inputs, "the sink")?,
                (self.targets)(sink.target.as_bytes())?,
                sink.run_id,
                sink.json_columns,
            )));
        }
        self.ballista.try_decode(buf, inputs, ctx, proto_converter)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(bytes) = fold::encode_plan(node.as_ref()) {
            buf.extend_from_slice(FOLD);
            buf.extend_from_slice(&bytes);
            return Ok(());
        }
        if let Some(sink) = node.downcast_ref::<SinkExec>() {
            let target = String::from_utf8(sink.target().to_bytes()).map_err(|_| {
                DataFusionError::Internal("a sink's target must encode as text".to_string())
            })?;
            let sink = Sink {
                target,
                run_id: sink.run_id().to_string(),
                json_columns: sink.json_columns().to_vec(),
            };
            buf.extend_from_slice(SINK);
            buf.extend_from_slice(&serde_json::to_vec(&sink).expect("the sink serialises"));
            return Ok(());
        }
        self.ballista.try_encode(node, buf, proto_converter)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        if name == fold::ID_SET_FUNCTION {
            return fold::decode_udf(buf);
        }
        if let Some(udf) = spanlake_dsl::codec::decode_udf(buf)? {
            return Ok(udf);
        }
        self.ballista.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(bytes) =
            fold::encode_udf(node).or_else(|| spanlake_dsl::codec::encode_udf(node))
        {
            buf.extend_from_slice(&bytes);
            return Ok(());
        }
        self.ballista.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        if let Some(udaf) = spanlake_dsl::codec::decode_udaf(buf)? {
            return Ok(udaf);
        }
        self.ballista.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        if let Some(bytes) = spanlake_dsl::codec::encode_udaf(node) {
            buf.extend_from_slice(&bytes);
            return Ok(());
        }
        self.ballista.try_encode_udaf(node, buf)
    }
}
