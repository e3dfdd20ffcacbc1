//! The distributed product's servers on this machine, for trying it: Redis, a durable
//! PostgreSQL (fsync and synchronous commit on) with a fresh database, Apache Kafka and, with
//! `--cassandra`, Apache Cassandra for the call timeline. The harness the tests use starts them
//! on free ports, with their data in temporary directories that go when they stop.
//!
//!   stack [--cassandra] [--env FILE]
//!
//! Prints the environment the product reads (`export NAME=VALUE` lines) and writes it to FILE,
//! then runs until killed; the harness's watchdog stops each server when this process is gone.
//! `scripts/stack.sh up|env|down` runs it in the background.

use std::process::ExitCode;

use dialer_testkit::{Cassandra, HarnessError, Kafka, Postgres, RedisServer};

/// What runs, held for the life of the process.
struct Stack {
    env: Vec<(&'static str, String)>,
    _servers: (Postgres, RedisServer, Kafka, Option<Cassandra>),
}

fn start(cassandra: bool) -> Result<Stack, HarnessError> {
    let pg = Postgres::own()?;
    let database = pg.create_database()?;
    let redis = RedisServer::start()?;
    let kafka = Kafka::start()?;
    let mut env = vec![
        ("DATABASE_URL", database),
        ("REDIS_URL", redis.url()),
        ("KAFKA_BROKERS", kafka.bootstrap()),
        ("DIALER_BUS_KIND", "kafka".to_string()),
    ];
    let cql = if cassandra { Some(Cassandra::start()?) } else { None };
    if let Some(c) = &cql {
        let node = c.node();
        let (host, port) = node.rsplit_once(':').unwrap_or((node.as_str(), "9042"));
        env.push(("SCYLLA_HOST", host.to_string()));
        env.push(("SCYLLA_PORT", port.to_string()));
    }
    Ok(Stack { env, _servers: (pg, redis, kafka, cql) })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cassandra = args.iter().any(|a| a == "--cassandra");
    let env_file = args.iter().position(|a| a == "--env").and_then(|i| args.get(i + 1));
    if let Some(bad) = args.iter().find(|a| a.starts_with("--") && *a != "--cassandra" && *a != "--env") {
        eprintln!("stack: unknown option {bad}; usage: stack [--cassandra] [--env FILE]");
        return ExitCode::from(2);
    }
    let stack = match start(cassandra) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("stack: {e}");
            return ExitCode::FAILURE;
        }
    };
    let text: String = stack.env.iter().map(|(k, v)| format!("export {k}={v}\n")).collect();
    print!("{text}");
    if let Some(path) = env_file {
        // Written whole under another name, then renamed: a reader never sees half of it.
        let tmp = format!("{path}.tmp");
        if let Err(e) = std::fs::write(&tmp, &text).and_then(|()| std::fs::rename(&tmp, path)) {
            eprintln!("stack: writing {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    eprintln!("stack: running; stop it with scripts/stack.sh down (or kill {})", std::process::id());
    loop {
        std::thread::park();
    }
}
