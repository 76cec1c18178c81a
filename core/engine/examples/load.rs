//! The load generator with no Python: `load URL CONNECTIONS THREADS SECONDS [RATE]`.

use std::time::Duration;

use pymesh_engine::bench::{run, BenchOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, c, t, d, rest @ ..] = args.as_slice() else {
        return Err("usage: load URL CONNECTIONS THREADS SECONDS [RATE]".into());
    };
    let opts = BenchOptions {
        url: url.clone(),
        connections: c.parse()?,
        threads: t.parse()?,
        duration: Some(Duration::from_secs_f64(d.parse()?)),
        rate: rest.first().map(|r| r.parse()).transpose()?,
        ..BenchOptions::default()
    };
    let r = run(&opts)?;
    println!("{r:#?}");
    Ok(())
}
