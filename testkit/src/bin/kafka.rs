//! A standalone Apache Kafka broker with the harness's settings, for benches that take
//! `--brokers`: a broker that keeps running between runs is warm (its JIT done), as production
//! brokers are; one a bench starts itself spends about a core compiling during the first run.
//!
//!   cargo run --release -p dialer-testkit --bin kafka    prints the address; Enter stops it
//!
//! Without a terminal (`… &`, stdin at its end at once) it runs until killed; the harness's
//! watchdog stops the broker when this process dies.

fn main() -> std::process::ExitCode {
    match dialer_testkit::Kafka::start() {
        Ok(k) => {
            println!("{}", k.bootstrap());
            println!("kafka: broker running; press Enter (or kill this process) to stop it");
            if let Ok(0) = std::io::stdin().read_line(&mut String::new()) {
                loop {
                    std::thread::park();
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafka: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
