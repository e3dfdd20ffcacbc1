//! The data plane's metric catalogue (its part of `/metrics`). The shards record these; the
//! counters without labels start at zero here so that their rates are defined (and the alerts
//! on them work) before the first event.

/// Describes this crate's metrics to the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("dialer_dials_total", "Calls placed by the data plane.");
    describe_counter!(
        "dialer_dataplane_suppressed_total",
        "Queued calls not dialled because their number was opted out after dispatch (reported expired, skipped at the next claim)."
    );
    describe_counter!(
        "dialer_status_events_reproduced_total",
        "Status events the broker did not take, queued to be produced again after a back-off."
    );
    describe_counter!(
        "dialer_call_outcomes_total",
        "Ended dial attempts by outcome (completed, failed, failed_retryable, expired) and provider reason."
    );
    describe_gauge!(
        "dialer_limiter_global_cap",
        "TELEPHONY_GLOBAL_MAX_CONCURRENCY as this data plane was started with."
    );
    describe_histogram!(
        "dialer_dispatch_to_dial_seconds",
        Unit::Seconds,
        "Wait of a dispatch message inside a shard until its call is placed."
    );
    describe_counter!(
        "dialer_unknown_outcomes_total",
        "Redelivered attempts the journal showed as started before a restart: reported unknown_outcome, not redialed."
    );
    describe_counter!("dialer_dispatch_malformed_total", "Dispatch messages that could not be read and were skipped.");
    describe_counter!(
        "dialer_dataplane_duplicates_total",
        "Second messages of an attempt (a control plane published an unconfirmed claim again) finished without a dial."
    );
    describe_counter!(
        "dialer_dataplane_journal_held_total",
        "Starts not dialled because the attempt journal could not be written (a full disk): each message waits in the shard and tries again, its attempt unused."
    );
    describe_gauge!(
        "dialer_shard_busy_ratio",
        "Share of the last second a data-plane shard's core spent working, by shard."
    );
    describe_gauge!("dialer_shard_calls_in_progress", "Calls a shard has placed and not yet seen end, by shard.");
    describe_gauge!(
        "dialer_shard_messages_waiting",
        "Dispatch messages a shard holds waiting for a token or their time."
    );
    describe_gauge!(
        "dialer_shard_fail_closed",
        "1 while a shard's leases have expired and the limiter does not answer (no new dials), by shard."
    );
    describe_counter!(
        "dialer_sip_attempts_total",
        "INVITE transactions started on a SIP trunk, by trunk (its rate is the trunk's calls per second)."
    );
    describe_counter!("dialer_sip_answers_total", "Calls answered (2xx) on a SIP trunk, by trunk.");
    describe_counter!(
        "dialer_sip_responses_total",
        "Final outcomes of INVITEs on a SIP trunk by trunk and status code (\"timeout\" when none came)."
    );
    describe_gauge!(
        "dialer_sip_channels_in_use",
        "Channels of a SIP trunk a shard holds (calls up), by trunk and shard."
    );
    describe_gauge!(
        "dialer_sip_trunk_healthy",
        "1 while a SIP trunk is in rotation on a shard, 0 while it is out for a back-off, by trunk and shard."
    );
    describe_counter!(
        "dialer_sip_caller_id_refused_total",
        "Calls whose campaign caller ID the trunk does not allow (the trunk's own was presented), by trunk."
    );
    describe_counter!("dialer_sip_unreadable_total", "SIP datagrams that could not be parsed and were dropped.");
    for counter in [
        "dialer_dials_total",
        "dialer_status_events_reproduced_total",
        "dialer_unknown_outcomes_total",
        "dialer_dispatch_malformed_total",
        "dialer_dataplane_duplicates_total",
        "dialer_dataplane_journal_held_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
}
