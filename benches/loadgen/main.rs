//! The load benchmark's tool: a fast fake provider and a load generator in one binary.
//! `bash benches/load.sh` builds it and drives every run; the subcommands can also be used
//! alone:
//!
//! ```text
//! loadgen upstream [--listen 127.0.0.1:0] [--chunks 30] [--interval-ms 100]
//! loadgen relay    --upstream IP:PORT [--listen 127.0.0.1:0]
//! loadgen closed   --url URL [--conns 64] [--duration 10] [--warmup 1] [--model M]
//!                  [--users N]   (N returning end users cycled; 0, the default: a new one each)
//!                  [--flags N]   (model M-0 … M-(N-1) cycled; 0, the default: M itself)
//! loadgen open     --url URL [--rate 2000] [--conns 64] [--duration 10] [--model M]
//! loadgen streams  --url URL [--streams 1000] [--ramp 1000] [--chunks 30] [--interval-ms 100]
//!                  [--stall-ms 2000] [--proto h1|h2] [--per-conn 100] [--model M]
//! loadgen overhead --url http://ADMIN/metrics
//! loadgen first    --url URL --since-ns NS [--model M] [--deadline 10]
//!                  (start-up: first connection and first answer, in ms since NS)
//! loadgen freeport
//! ```
//!
//! Every measuring subcommand prints one line `result key=value …` that the script reads.
//! Only loopback addresses are accepted as targets, and every loop is bounded in time.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`upstream`] | the fake OpenAI-compatible provider (JSON answers and timed SSE streams) |
//! | [`relay`] | a bare hyper reverse proxy: the floor of the stack Switchyard is built on |
//! | [`client`] | one keep-alive HTTP/1.1 connection, request bodies, loopback-only targets |
//! | [`runs`] | closed loop, open loop, held streams, the `/metrics` overhead scrape |
//! | [`start`] | start-up time: first connection and first answer after the proxy's exec |

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod client;
mod relay;
mod runs;
mod start;
mod upstream;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

/// `--key value` options after the subcommand.
struct Args {
    values: HashMap<String, String>,
}

impl Args {
    fn parse(raw: &[String]) -> Result<Args, String> {
        let mut values = HashMap::new();
        let mut it = raw.iter();
        while let Some(key) = it.next() {
            let Some(name) = key.strip_prefix("--") else {
                return Err(format!("unexpected argument {key:?}"));
            };
            let Some(value) = it.next() else {
                return Err(format!("--{name} needs a value"));
            };
            values.insert(name.to_owned(), value.clone());
        }
        Ok(Args { values })
    }

    fn str(&self, name: &str, default: &str) -> String {
        self.values
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    fn required(&self, name: &str) -> Result<String, String> {
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: {v:?} is not a valid number")),
        }
    }

    fn secs(&self, name: &str, default: f64) -> Result<Duration, String> {
        let s: f64 = self.num(name, default)?;
        if !(0.0..=3600.0).contains(&s) {
            return Err(format!("--{name} must be between 0 and 3600 seconds"));
        }
        Ok(Duration::from_secs_f64(s))
    }
}

const USAGE: &str = "loadgen: the load benchmark's fake provider and load generator.
Run the whole benchmark with `bash benches/load.sh`; subcommands:
  upstream | relay | closed | open | streams | first | overhead | freeport   (see benches/loadgen/main.rs)";

fn runtime() -> tokio::runtime::Runtime {
    // Worker threads follow the CPUs this process may run on (taskset), one per core.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn run(command: &str, args: &Args) -> Result<(), String> {
    match command {
        "upstream" => {
            let settings = upstream::Settings {
                listen: args.str("listen", "127.0.0.1:0"),
                chunks: args.num("chunks", 30)?,
                interval: Duration::from_millis(args.num("interval-ms", 100)?),
            };
            runtime().block_on(upstream::serve(settings))
        }
        "relay" => {
            let listen = args.str("listen", "127.0.0.1:0");
            let upstream = args.required("upstream")?;
            runtime().block_on(relay::serve(&listen, &upstream))
        }
        "closed" => {
            let plan = runs::ClosedPlan {
                target: client::Target::parse(&args.required("url")?)?,
                model: args.str("model", "bench"),
                conns: args.num("conns", 64)?,
                warmup: args.secs("warmup", 1.0)?,
                duration: args.secs("duration", 10.0)?,
                users: args.num("users", 0)?,
                flags: args.num("flags", 0)?,
            };
            runtime().block_on(runs::closed(plan))
        }
        "open" => {
            let plan = runs::OpenPlan {
                target: client::Target::parse(&args.required("url")?)?,
                model: args.str("model", "bench"),
                conns: args.num("conns", 64)?,
                rate: args.num("rate", 2000.0)?,
                duration: args.secs("duration", 10.0)?,
            };
            runtime().block_on(runs::open(plan))
        }
        "streams" => {
            let plan = runs::StreamPlan {
                target: client::Target::parse(&args.required("url")?)?,
                model: args.str("model", "bench"),
                streams: args.num("streams", 1000)?,
                ramp: args.num("ramp", 1000.0)?,
                chunks: args.num("chunks", 30)?,
                interval: Duration::from_millis(args.num("interval-ms", 100)?),
                stall: Duration::from_millis(args.num("stall-ms", 2000)?),
                proto: client::Proto::parse(&args.str("proto", "h1"))?,
                per_conn: args.num("per-conn", 100)?,
            };
            runtime().block_on(runs::streams(plan))
        }
        "first" => {
            let target = client::Target::parse(&args.required("url")?)?;
            let since: u128 = args
                .required("since-ns")?
                .parse()
                .map_err(|_| "--since-ns: not a number".to_owned())?;
            let deadline = args.secs("deadline", 10.0)?;
            runtime().block_on(start::first(
                target,
                args.str("model", "bench"),
                since,
                deadline,
            ))
        }
        "overhead" => {
            let target = client::Target::parse(&args.required("url")?)?;
            runtime().block_on(runs::overhead(target))
        }
        "freeport" => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            println!("{port}");
            Ok(())
        }
        other => Err(format!("unknown subcommand {other:?}\n{USAGE}")),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` (every bench) and `cargo test --all-targets` run this binary too, with
    // `--bench` or no argument: there is nothing to measure without the script.
    let Some(command) = argv.first().filter(|a| !a.starts_with('-')) else {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    let result = Args::parse(&argv[1..]).and_then(|args| run(command, &args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen {command}: {e}");
            ExitCode::from(2)
        }
    }
}
