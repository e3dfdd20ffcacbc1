//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds `../migrations` at
//! compile time, and a new file there changes no Rust source.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
