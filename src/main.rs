//! The `switchyard` command: `serve`, `check`, `decide`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::flags::audience::{AttrValue, Attributes};
use switchyard::{Config, Listeners};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Feature flags as the control plane for AI features: an OpenAI-compatible proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API and the admin listener.
    Serve {
        /// The configuration file.
        #[arg(long, default_value = "proxy.toml")]
        config: PathBuf,
        /// Override `state.url` (e.g. `sqlite:/tmp/try.db`).
        #[arg(long)]
        state: Option<String>,
        /// Start clean: delete the SQLite state file first (runtime overrides, rollout stages,
        /// audit log, exposures and feedback). Refused for PostgreSQL.
        #[arg(long)]
        fresh: bool,
        /// Log format on stderr: `text` (colour only on a terminal) or `json` (one object a line).
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
        /// Override `server.listen` (use port 0 for any free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override `server.admin_listen`.
        #[arg(long)]
        admin_listen: Option<SocketAddr>,
    },
    /// Validate a configuration and print a summary; exits non-zero with the errors.
    Check {
        /// The configuration file.
        #[arg(long, default_value = "proxy.toml")]
        config: PathBuf,
    },
    /// Operate a running proxy through its admin API (SWITCHYARD_ADMIN_URL, SWITCHYARD_ADMIN_TOKEN).
    Ctl {
        #[command(subcommand)]
        action: CtlCommand,
        /// Why (kept in the audit log).
        #[arg(long, global = true)]
        reason: Option<String>,
        /// Print the API's JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Probe a running proxy (container health checks): exits 0 when the URL answers 2xx.
    Health {
        /// What to GET.
        #[arg(long, default_value = switchyard::fleet::probe::DEFAULT_URL)]
        url: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Show which variation a user gets, and why.
    Decide {
        /// The configuration file.
        #[arg(long, default_value = "proxy.toml")]
        config: PathBuf,
        /// The flag key.
        #[arg(long)]
        flag: String,
        /// The bucketing id.
        #[arg(long)]
        user: String,
        /// An attribute, `key=value` (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attrs: Vec<String>,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every flag: effective state and live figures.
    Flags,
    /// One flag in detail.
    Flag { flag: String },
    /// Kill switch off: the flag serves its variations again (an override of the file until
    /// cleared; --clear drops the override and returns to the file's `enabled`).
    Enable {
        flag: String,
        /// Drop the runtime override instead.
        #[arg(long)]
        clear: bool,
    },
    /// Kill switch on: everyone gets the off variation (--clear: back to the file).
    Disable {
        flag: String,
        /// Drop the runtime override instead.
        #[arg(long)]
        clear: bool,
    },
    /// Force rule-based answers for a flag (or one variation); --off lifts it (even where the
    /// file forces it); --clear drops the override and returns to the file.
    Fallback {
        flag: String,
        /// Only this variation.
        #[arg(long)]
        variation: Option<String>,
        /// Lift the forced fallback.
        #[arg(long)]
        off: bool,
        /// Drop the runtime override instead.
        #[arg(long, conflicts_with = "off")]
        clear: bool,
    },
    /// Drop every runtime override of a flag (or one: --field enabled | force_fallback |
    /// variation:V | stage:RULE | held:RULE): back to proxy.toml.
    Clear {
        flag: String,
        #[arg(long)]
        field: Option<String>,
    },
    /// Rollout status: stage, gate, figures.
    Rollout { flag: String },
    /// Advance the rollout one stage if its gate holds.
    Advance {
        flag: String,
        /// Advance even if the gate is not met (audited).
        #[arg(long)]
        force: bool,
        /// The rollout rule, when the flag has several.
        #[arg(long)]
        rule: Option<String>,
    },
    /// Roll the rollout back one stage.
    Rollback {
        flag: String,
        #[arg(long)]
        rule: Option<String>,
    },
    /// Set the rollout's stage.
    Stage {
        flag: String,
        stage: u32,
        #[arg(long)]
        rule: Option<String>,
    },
    /// Freeze the rollout (no automatic advance).
    Hold {
        flag: String,
        #[arg(long)]
        rule: Option<String>,
        /// Unfreeze instead.
        #[arg(long)]
        release: bool,
    },
    /// The audit log, newest first.
    Audit {
        #[arg(long)]
        flag: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Reload proxy.toml on the running proxy.
    Reload,
    /// Experiment results of a flag.
    Results {
        flag: String,
        #[arg(long)]
        metric: Option<String>,
    },
    /// Client keys: create, list, show, revoke, rotate.
    Keys {
        #[command(subcommand)]
        action: switchyard::keys::cli::KeysAction,
    },
    /// The bandit of a flag: `bandit FLAG` (= show), show, replay FLAG EPOCH, set, epoch.
    #[command(args_conflicts_with_subcommands = true)]
    Bandit {
        #[command(subcommand)]
        action: Option<switchyard::bandit::cli::BanditAction>,
        /// The flag (same as `bandit show FLAG`).
        flag: Option<String>,
    },
    /// Exposures, feedback, eval scores and per-request records as JSON Lines, page after
    /// page (the cursor to resume from is printed on stderr).
    Export(switchyard::export::cli::ExportArgs),
}

fn ctl(action: CtlCommand, reason: Option<String>, json: bool) -> ExitCode {
    use switchyard::ctl::Action;
    let action = match action {
        CtlCommand::Flags => Action::Flags,
        CtlCommand::Flag { flag } => Action::Flag(flag),
        CtlCommand::Enable { flag, clear: true } | CtlCommand::Disable { flag, clear: true } => {
            Action::Clear {
                flag,
                field: Some("enabled".into()),
            }
        }
        CtlCommand::Enable { flag, .. } => Action::SetEnabled(flag, true),
        CtlCommand::Disable { flag, .. } => Action::SetEnabled(flag, false),
        CtlCommand::Fallback {
            flag,
            variation,
            clear: true,
            ..
        } => Action::Clear {
            flag,
            field: Some(match variation {
                Some(v) => format!("variation:{v}"),
                None => "force_fallback".into(),
            }),
        },
        CtlCommand::Clear { flag, field } => Action::Clear { flag, field },
        CtlCommand::Fallback {
            flag,
            variation,
            off,
            ..
        } => Action::Fallback {
            flag,
            forced: !off,
            variation,
        },
        CtlCommand::Rollout { flag } => Action::Rollout(flag),
        CtlCommand::Advance { flag, force, rule } => Action::Advance { flag, force, rule },
        CtlCommand::Rollback { flag, rule } => Action::Rollback { flag, rule },
        CtlCommand::Stage { flag, stage, rule } => Action::Stage { flag, stage, rule },
        CtlCommand::Hold {
            flag,
            rule,
            release,
        } => Action::Hold {
            flag,
            held: !release,
            rule,
        },
        CtlCommand::Audit { flag, limit } => Action::Audit { flag, limit },
        CtlCommand::Reload => Action::Reload,
        CtlCommand::Results { flag, metric } => Action::Results { flag, metric },
        CtlCommand::Keys { action } => Action::Keys(action),
        CtlCommand::Bandit {
            action: Some(action),
            ..
        } => Action::Bandit(action),
        CtlCommand::Bandit {
            action: None,
            flag: Some(flag),
        } => Action::Bandit(switchyard::bandit::cli::BanditAction::Show { flag }),
        CtlCommand::Bandit {
            action: None,
            flag: None,
        } => {
            eprintln!("usage: switchyard ctl bandit FLAG | show FLAG | replay FLAG EPOCH | set FLAG … | epoch FLAG");
            return ExitCode::from(2);
        }
        CtlCommand::Export(args) => Action::Export(args),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let target = switchyard::ctl::Target::from_env();
    let code = runtime.block_on(switchyard::ctl::run(&target, &action, reason, json));
    ExitCode::from(code as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
            state,
            fresh,
            log_format,
        } => serve(
            config,
            ServeOptions {
                listen,
                admin_listen,
                state,
                fresh,
            },
            &log_format,
        ),
        Command::Check { config } => check(config),
        Command::Health { url, timeout } => health(&url, timeout),
        Command::Ctl {
            action,
            reason,
            json,
        } => ctl(action, reason, json),
        Command::Decide {
            config,
            flag,
            user,
            attrs,
            json,
        } => decide(config, &flag, &user, &attrs, json),
    }
}

fn health(url: &str, timeout: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(switchyard::fleet::probe::probe(url, timeout)) {
        Ok(status) => {
            println!("{url}: HTTP {status}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("unhealthy: {why}");
            ExitCode::from(1)
        }
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!("{} error(s) in {}", errors.0.len(), path.display());
        ExitCode::from(1)
    })
}

fn init_tracing(format: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        // Colour codes only for a person at a terminal, never into files or pipes.
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// `serve --fresh`: removes the SQLite state file (and its journal files).
fn remove_state(url: &str) -> Result<(), String> {
    let Some(path) = url.strip_prefix("sqlite:") else {
        return Err(format!(
            "--fresh only removes a SQLite state file; {} is not one (clear a shared store by hand)",
            url.split('@').next_back().unwrap_or("the state store")
        ));
    };
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = format!("{path}{suffix}");
        match std::fs::remove_file(&file) {
            Ok(()) => tracing::info!(file = %file, "--fresh: removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("--fresh: cannot remove {file}: {e}")),
        }
    }
    Ok(())
}

/// How `serve` was asked to run.
struct ServeOptions {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    state: Option<String>,
    fresh: bool,
}

fn serve(path: PathBuf, opts: ServeOptions, log_format: &str) -> ExitCode {
    init_tracing(log_format);
    let ServeOptions {
        listen,
        admin_listen,
        state,
        fresh,
    } = opts;
    match switchyard::server::raise_open_files_limit() {
        Ok((before, now, hard)) => {
            tracing::info!(soft_before = before, soft = now, hard, "open files limit")
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open files limit"),
    }
    let mut config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(url) = state {
        config.state_url = url;
    }
    if fresh {
        if let Err(e) = remove_state(&config.state_url) {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        // SIGHUP's default action ends the process: take it over before the listeners are
        // announced (the reload loop registers its own stream before serving).
        #[cfg(unix)]
        let _early_hup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let main_addr = listen.unwrap_or(config.server.listen);
        let admin_addr = admin_listen.unwrap_or(config.server.admin_listen);
        let listeners = match Listeners::bind(main_addr, admin_addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot bind {main_addr} / {admin_addr}: {e}");
                return ExitCode::from(1);
            }
        };
        let (Ok(main_bound), Ok(admin_bound)) = (listeners.main.local_addr(), listeners.admin.local_addr()) else {
            eprintln!("cannot read the bound addresses");
            return ExitCode::from(1);
        };
        // Scripts and tests read these two lines to find the ports.
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            // A closed stdout (the launcher went away) must not stop the server.
            let _ = writeln!(out, "switchyard listening on http://{main_bound}");
            let _ = writeln!(out, "switchyard admin listening on http://{admin_bound}");
            let _ = out.flush();
        }
        tracing::info!(config = %path.display(), flags = config.flags.len(), hash = %config.hash, "serving");
        match switchyard::run_with(listeners, config, Some(path.clone()), shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        }
    })
}

/// Registers the SIGTERM and SIGINT handlers now (a signal arriving while the proxy starts is
/// a shutdown request, not a kill) and returns the future that resolves on the first.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    switchyard::out!("{}: ok (hash {})", path.display(), config.hash);
    switchyard::out!(
        "  listen {}  admin {}",
        config.server.listen,
        config.server.admin_listen
    );
    switchyard::out!(
        "  {} provider(s), {} prompt(s), {} audience(s), {} flag(s)",
        config.providers.len(),
        config.prompt_count,
        config.audience_count,
        config.flags.len()
    );
    for (name, p) in &config.providers {
        switchyard::out!("  provider {name}: {}", p.kind.as_str());
    }
    for flag in &config.flags {
        let state = if flag.enabled { "on" } else { "OFF" };
        switchyard::out!(
            "  flag {} [{state}]: {} variation(s), {} rule(s)",
            flag.key,
            flag.variations.len(),
            flag.rules.len()
        );
        for v in &flag.variations {
            switchyard::out!(
                "    variation {}: {} / {}",
                v.key,
                v.provider.name,
                v.model_id
            );
        }
        for r in &flag.rules {
            let audience = r
                .audience
                .as_ref()
                .map_or("everyone".to_owned(), |(n, _)| format!("audience {n}"));
            let ranges: Vec<String> = r
                .allocation
                .iter()
                .map(|a| {
                    format!(
                        "{}<{}",
                        a.variation
                            .and_then(|i| flag.variations.get(i))
                            .map_or("(none)", |v| v.key.as_str()),
                        a.end
                    )
                })
                .collect();
            let ranges = match &r.rollout {
                Some(ro) => {
                    let stages: Vec<String> = ro
                        .stages
                        .iter()
                        .map(|e| format!("{}%", f64::from(*e) / 100.0))
                        .collect();
                    format!(
                        "rollout of {} through [{}], initial stage {} ({}%){}",
                        flag.variations
                            .get(ro.variation)
                            .map_or("?", |v| v.key.as_str()),
                        stages.join(", "),
                        ro.initial_stage,
                        f64::from(ro.end_at(ro.initial_stage)) / 100.0,
                        if ro.auto_advance {
                            ", auto-advance"
                        } else {
                            ""
                        }
                    )
                }
                None => ranges.join(" "),
            };
            switchyard::out!("    rule {} ({audience}): {ranges}", r.id);
        }
    }
    ExitCode::SUCCESS
}

fn decide(path: PathBuf, flag_key: &str, user: &str, attrs: &[String], json: bool) -> ExitCode {
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some((_, flag)) = config.flag(flag_key) else {
        let known: Vec<&str> = config.flags.iter().map(|f| f.key.as_str()).collect();
        eprintln!("unknown flag {flag_key:?} (known: {})", known.join(", "));
        return ExitCode::from(2);
    };
    let mut attributes = Attributes::new();
    for a in attrs {
        let Some((k, v)) = a.split_once('=') else {
            eprintln!("--attr takes KEY=VALUE, got {a:?}");
            return ExitCode::from(2);
        };
        attributes.insert(k, AttrValue::String(v.to_owned()));
    }
    let out = switchyard::proxy::decide::decide_for(flag, user, &attributes);
    if json {
        switchyard::out!("{out}");
    } else {
        let rule = out["rule"].as_str().unwrap_or("(none)");
        let bucket = out["bucket"]
            .as_u64()
            .map_or("-".to_owned(), |b| b.to_string());
        switchyard::out!("flag       {}", flag.key);
        switchyard::out!("user       {user}");
        switchyard::out!("variation  {}", out["variation"].as_str().unwrap_or("?"));
        switchyard::out!("rule       {rule}");
        switchyard::out!("bucket     {bucket}");
        switchyard::out!(
            "reason     {}",
            explain(out["reason"].as_str().unwrap_or(""))
        );
        switchyard::out!("variables  {}", out["variables"]);
    }
    ExitCode::SUCCESS
}

fn explain(reason: &str) -> String {
    match reason {
        "flag_disabled" => {
            "flag_disabled: the kill switch is off, everyone gets the off variation".into()
        }
        "rule_match" => {
            "rule_match: the user is in the rule's audience and its bucket falls in the allocation"
                .into()
        }
        "everyone_else" => {
            "everyone_else: no earlier rule held the user; the last rule decided".into()
        }
        "not_bucketed" => {
            "not_bucketed: no rule bucketed the user; the off variation is served".into()
        }
        other => other.to_owned(),
    }
}
