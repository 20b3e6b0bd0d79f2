//! Stage 6 of the path — feedback: what the device hears back, published on
//! `yijian/v1/devices/{id}/feedback` at QoS 1 over the gateway's own MQTT connection.
//! [`resume`] tells a device that was away where its requests stand.

pub mod changes;
pub mod resume;

use crate::broker;
use crate::clock::now_ms;
use crate::config::MqttConfig;
use crate::store::Notice;
use crate::telemetry;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use yijian_wire::{topic, Feedback};

/// Publishes feedback; cheap to clone.
#[derive(Clone)]
pub struct FeedbackSender {
    client: AsyncClient,
}

impl FeedbackSender {
    /// Connect the gateway's feedback publisher and keep its event loop running until
    /// `shutdown`. Returns once the first CONNACK has arrived.
    pub async fn connect(
        cfg: &MqttConfig,
        secret: &str,
        shutdown: CancellationToken,
    ) -> Result<FeedbackSender, rumqttc::ConnectionError> {
        let (client, mut events) =
            broker::gateway_client(cfg, broker::GATEWAY_FEEDBACK_CLIENT, secret, 4096);
        wait_connack(&mut events).await?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = events.poll() => if let Err(e) = ev {
                        tracing::warn!(error = %e, "feedback connection lost; reconnecting");
                        // rumqttc reconnects on the next poll; pace it so a dead broker is not spun on.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        Ok(FeedbackSender { client })
    }

    /// Tell `device_id` about its press.
    pub async fn send(&self, device_id: &str, feedback: &Feedback) {
        let t = topic::topic(device_id, topic::Kind::Feedback);
        match self
            .client
            .publish(t, QoS::AtLeastOnce, false, feedback.to_json())
            .await
        {
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

/// Poll until the first CONNACK (or the first error).
pub(crate) async fn wait_connack(
    events: &mut EventLoop,
) -> Result<rumqttc::ConnAck, rumqttc::ConnectionError> {
    loop {
        if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await? {
            return Ok(ack);
        }
    }
}
