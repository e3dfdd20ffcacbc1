//! The transport's metric catalogue (its part of `/metrics`).

/// Describes this crate's metrics to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "dialer_kafka_consumer_lag",
        "Messages between a consumer's position and the partition's end, by topic and partition."
    );
    describe_counter!(
        "dialer_kafka_produce_errors_total",
        "Messages the broker refused or did not acknowledge, by topic."
    );
    describe_counter!(
        "dialer_kafka_client_errors_total",
        "Errors reported by a Kafka client (connection, broker, transport)."
    );
}
