//! `bench broker`: the Kafka broker's own produce and consume ceiling with messages of a given
//! size, the reference for the data plane's throughput through the same broker: producing
//! alone, consuming alone, and both at once (a pipeline, what the data plane is).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Broker to measure instead of an Apache Kafka the harness starts.
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The broker's rates, messages per second.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    /// Producing alone (one producer, to the acknowledgement of the last message).
    pub produce: f64,
    /// Consuming alone what was produced ([`consumers`] consumers, partitions split).
    pub consume: f64,
    /// Producing and consuming at once, as a pipeline does: messages through the broker per
    /// second, from the first produced to the last consumed.
    pub pipeline: f64,
}

/// Consumers reading at once (partitions split statically), as many as a data plane has
/// shards on this machine, so that one client's per-message work does not pass for the broker's.
pub fn consumers() -> usize {
    crate::cores().clamp(1, 8)
}

const PARTITIONS: i32 = 8;

/// [`consumers`] plain consumers of `topic` from its beginning, partition `p` read by consumer
/// `p % consumers()` (static assignment: no group rebalance to wait for).
pub fn split_readers(brokers: &str, topic: &str, partitions: i32) -> Result<Vec<BaseConsumer>> {
    let k = consumers();
    (0..k)
        .map(|i| {
            let mut parts = TopicPartitionList::new();
            for p in (0..partitions).filter(|p| *p as usize % k == i) {
                parts.add_partition_offset(topic, p, Offset::Beginning)?;
            }
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", format!("{topic}.bench-reader"))
                .set("socket.nagle.disable", "true")
                .set("enable.auto.commit", "false")
                .create()?;
            consumer.assign(&parts)?;
            Ok(consumer)
        })
        .collect()
}

async fn produce_all(brokers: &str, topic: &str, size: usize, n: u64) -> Result<f64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let payload = vec![b'x'; size];
    let t0 = Instant::now();
    for i in 0..n {
        let key = i.to_le_bytes();
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&key[..]).payload(&payload)) {
                Ok(_) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Reads `n` messages of `topic` from the beginning with [`split_readers`] threads; the instants
/// of the first and last message.
fn consume_all(brokers: &str, topic: &str, n: u64) -> Result<(Instant, Instant)> {
    let got = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for consumer in split_readers(brokers, topic, PARTITIONS)? {
        let got = got.clone();
        threads.push(std::thread::spawn(move || -> Result<(Option<Instant>, Option<Instant>)> {
            let (mut first, mut last) = (None, None);
            let mut idle_since = Instant::now();
            while got.load(Ordering::Relaxed) < n {
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(_)) => {
                        let now = Instant::now();
                        first.get_or_insert(now);
                        last = Some(now);
                        idle_since = now;
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None if idle_since.elapsed() > Duration::from_secs(30) => {
                        bail!("no message for 30 s after {} of {n}", got.load(Ordering::Relaxed))
                    }
                    None => {}
                }
            }
            Ok((first, last))
        }));
    }
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for t in threads {
        let (f, l) = t.join().map_err(|_| anyhow::anyhow!("a consumer thread panicked"))??;
        first = match (first, f) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(l);
    }
    match (first, last) {
        (Some(f), Some(l)) => Ok((f, l)),
        _ => bail!("no message consumed"),
    }
}

pub async fn ceiling(brokers: &str, size: usize, n: u64) -> Result<Ceiling> {
    let run = format!("{}.{}", std::process::id(), std::time::SystemTime::UNIX_EPOCH.elapsed()?.as_nanos());
    let (alone, both) = (format!("bench.ceiling.{run}"), format!("bench.pipeline.{run}"));
    dialer_bus::kafka::ensure_topics(brokers, &[(&alone, PARTITIONS), (&both, PARTITIONS)]).await?;
    let produce = produce_all(brokers, &alone, size, n).await?;
    let (b, t) = (brokers.to_string(), alone.clone());
    let (first, last) = tokio::task::spawn_blocking(move || consume_all(&b, &t, n)).await??;
    let consume = n as f64 / last.duration_since(first).as_secs_f64().max(1e-9);
    // Both at once: consumers first, then the producer.
    let (b, t) = (brokers.to_string(), both.clone());
    let reader = tokio::task::spawn_blocking(move || consume_all(&b, &t, n));
    let t0 = Instant::now();
    produce_all(brokers, &both, size, n).await?;
    let (_, last) = reader.await??;
    let pipeline = n as f64 / last.duration_since(t0).as_secs_f64().max(1e-9);
    Ok(Ceiling { produce, consume, pipeline })
}

pub async fn run(a: Args) -> Result<()> {
    let (brokers, _kafka) = crate::kafka_or(a.brokers.as_ref()).await?;
    let c = ceiling(&brokers, a.message_bytes, a.messages).await?;
    println!("{:<30} {:>12.0}", "produce_msgs_per_sec", c.produce);
    println!("{:<30} {:>12.0}", "consume_msgs_per_sec", c.consume);
    println!("{:<30} {:>12.0}", "pipeline_msgs_per_sec", c.pipeline);
    println!("{:<30} {:>12}", "consumers", consumers());
    println!("{:<30} {:>12}", "cores (nproc)", crate::cores());
    crate::write_json(
        a.json.as_deref(),
        &json!({"scenario": "broker", "settings": {"message_bytes": a.message_bytes, "messages": a.messages},
                "cores": crate::cores(), "produce_msgs_per_sec": c.produce, "consume_msgs_per_sec": c.consume,
                "pipeline_msgs_per_sec": c.pipeline, "consumers": consumers()}),
    )
}
