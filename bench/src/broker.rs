//! `bench broker`: the Kafka broker's own produce and consume ceiling with messages of a given
//! size, the reference for the data plane's throughput through the same broker.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Broker to measure instead of a harness-started tansu.
    #[arg(long)]
    brokers: Option<String>,
    /// tansu storage when the harness starts it: memory or sqlite.
    #[arg(long, default_value = "memory")]
    tansu_storage: String,
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    #[arg(long, default_value_t = 500_000)]
    messages: u64,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Produce and consume rates, messages per second.
#[derive(Clone, Copy, Debug)]
pub struct Ceiling {
    pub produce: f64,
    pub consume: f64,
}

pub async fn ceiling(brokers: &str, size: usize, n: u64) -> Result<Ceiling> {
    let topic = format!("bench.ceiling.{}.{}", std::process::id(), Instant::now().elapsed().as_nanos());
    dialer_dataplane::kafka::ensure_topics(brokers, &[(&topic, 8)]).await?;
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
            match producer.send_result(FutureRecord::to(&topic).key(&key[..]).payload(&payload)) {
                Ok(_) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let produce = n as f64 / t0.elapsed().as_secs_f64();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}.reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&topic])?;
    let mut got = 0u64;
    let mut t1 = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < n {
        if Instant::now() > deadline {
            bail!("consumed only {got} of {n} messages in 300 s");
        }
        match tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await {
            Ok(Ok(_)) => {
                t1.get_or_insert_with(Instant::now);
                got += 1;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!("no message for 10 s after {got} of {n}"),
        }
    }
    let consume = n as f64 / t1.map_or(1e-9, |t| t.elapsed().as_secs_f64());
    Ok(Ceiling { produce, consume })
}

pub async fn run(a: Args) -> Result<()> {
    let (brokers, _tansu) = crate::tansu_or(a.brokers.as_ref(), &a.tansu_storage)?;
    let c = ceiling(&brokers, a.message_bytes, a.messages).await?;
    println!("{:<30} {:>12.0}", "produce_msgs_per_sec", c.produce);
    println!("{:<30} {:>12.0}", "consume_msgs_per_sec", c.consume);
    println!("{:<30} {:>12}", "cores (nproc)", crate::cores());
    crate::write_json(
        a.json.as_deref(),
        &json!({"scenario": "broker", "settings": {"message_bytes": a.message_bytes, "messages": a.messages, "tansu_storage": a.tansu_storage},
                "cores": crate::cores(), "produce_msgs_per_sec": c.produce, "consume_msgs_per_sec": c.consume}),
    )
}
