//! A standalone Apache Kafka broker with the harness's settings, for benches that take
//! `--brokers`: a broker that keeps running between runs is warm (its JIT done), as production
//! brokers are; one a bench starts itself spends about a core compiling during the first run.
//!
//!   cargo run --release -p dialer-testkit --bin kafka    prints the address; Enter stops it

fn main() -> std::process::ExitCode {
    match dialer_testkit::Kafka::start() {
        Ok(k) => {
            println!("{}", k.bootstrap());
            println!("kafka: broker running; press Enter (or close stdin) to stop it");
            let _ = std::io::stdin().read_line(&mut String::new());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kafka: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
