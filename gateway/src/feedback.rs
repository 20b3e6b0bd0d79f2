//! Stage 6 of the path — feedback: what the device hears back, published at QoS 1 through the
//! source's [`Publisher`] on the topic its adapter names (`yijian/v1/devices/{id}/feedback` for
//! native devices). [`resume`] tells a device that was away where its requests stand.

pub mod changes;
pub mod resume;

use crate::adapter::Adapter;
use crate::clock::now_ms;
use crate::source::{Incoming, Publisher, Source, SourceError};
use crate::store::Notice;
use crate::telemetry;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use yijian_wire::Feedback;

/// The feedback connection's request queue: publishes waiting to be written.
const QUEUE: usize = 4096;

/// Publishes feedback; cheap to clone.
#[derive(Clone)]
pub struct FeedbackSender {
    /// The gateway's feedback connection.
    publisher: Publisher,
    /// Knows where a device hears its feedback, and whether it can be answered at all.
    adapter: Arc<dyn Adapter>,
}

impl FeedbackSender {
    /// Connect the gateway's feedback publisher (`client_id` at `source`) and keep its
    /// connection running until `shutdown`. Returns once connected.
    pub async fn connect(
        source: &Source,
        client_id: &str,
        adapter: Arc<dyn Adapter>,
        shutdown: CancellationToken,
    ) -> Result<FeedbackSender, SourceError> {
        let mut connection = source.connect(client_id, Vec::new(), QUEUE).await?;
        let publisher = connection.publisher();
        tokio::spawn(async move {
            while let Some(event) = connection.next(&shutdown).await {
                if let Incoming::Lost(e) = event {
                    tracing::warn!(error = %e, "feedback connection lost; reconnecting");
                }
            }
        });
        Ok(FeedbackSender { publisher, adapter })
    }

    /// Tell `device_id` about its press.
    pub async fn send(&self, device_id: &str, feedback: &Feedback) {
        // A device whose protocol cannot be answered has only the broker's PUBACK.
        let Some(t) = self.adapter.feedback_topic(device_id) else {
            return;
        };
        match self.publisher.publish(t, feedback.to_json()).await {
            Ok(()) => telemetry::feedback_sent(feedback.state),
            Err(e) => telemetry::feedback_failed(feedback.state, device_id, &e),
        }
    }

    /// Tell a device what a journal notice says, stamped now.
    pub async fn notify(&self, notice: &Notice) {
        self.send(&notice.device_id, &notice.feedback(now_ms()))
            .await;
    }
}
