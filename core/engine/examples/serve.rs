//! Run the engine from a snapshot file, with no Python: for profiling the core alone.
//!
//!     cargo run --release -p pymesh-engine --example serve -- SNAPSHOT.json [WORKERS]
//!
//! Runs until killed.

use std::time::Duration;

use pymesh_engine::{Engine, EngineOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: serve SNAPSHOT.json [WORKERS]")?;
    let workers = args.next().map(|w| w.parse()).transpose()?;
    let engine = Engine::new(EngineOptions { workers })?;
    engine.apply_json(&std::fs::read_to_string(path)?)?;
    for (name, addr) in engine.listeners() {
        println!("listener {name} on {addr}");
    }
    loop {
        // Serve until killed: the engine's own threads do the work.
        std::thread::sleep(Duration::from_secs(3600));
    }
}
